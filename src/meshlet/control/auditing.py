"""The control plane's own security events, in a hash-chained audit log.

A sidecar's audit log records who was let in to a workload; this one records
who was let in to the mesh: every SVID issued, renewed or refused, every join
token burned or refused, every config change accepted or refused (with the
digest of what was read), and every watch/ACK/leave refused because the caller's
SVID did not match the workload it named. The file is the same chained JSON
lines as a sidecar's (``meshlet.telemetry.audit``), so ``meshlet audit verify``
checks it. Never written: tokens, keys, CSRs (only a token's id, which the
used-token ledger holds anyway).

Each record has ``event`` and ``component: "control"``; the events and their
fields are listed in docs/control.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshlet.control.store import dir_signature
from meshlet.telemetry.audit import AuditLog

__all__ = ["ControlAudit", "files_digest"]


class ControlAudit:
    """Typed front of the control plane's ``AuditLog`` (a no-op without one)."""

    __slots__ = ("log",)

    def __init__(self, log: AuditLog | None) -> None:
        self.log = log

    def _write(self, event: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.record({"component": "control", "event": event, **fields})

    # -- identity -------------------------------------------------------------------

    def token_burned(self, *, token_id: str, spiffe_id: str, expires_at: float) -> None:
        self._write("token_burned", token_id=token_id, spiffe_id=spiffe_id, expires_at=expires_at)

    def token_refused(self, *, reason: str) -> None:
        self._write("token_refused", reason=reason)

    def svid_issued(
        self, *, spiffe_id: str, renewal: bool, serial: str, not_after: float, peer: str | None
    ) -> None:
        self._write(
            "svid_renewed" if renewal else "svid_issued",
            spiffe_id=spiffe_id,
            serial=serial,
            not_after=not_after,
            peer=peer,
        )

    def svid_refused(self, *, reason: str, credential: str, proven_id: str | None) -> None:
        self._write("svid_refused", reason=reason, credential=credential, proven_id=proven_id)

    def control_svid(self, *, spiffe_id: str, not_after: float) -> None:
        self._write("control_svid_issued", spiffe_id=spiffe_id, not_after=not_after)

    def access_refused(self, *, peer: str | None, workload: str, path: str, reason: str) -> None:
        self._write("access_refused", peer=peer, workload=workload, path=path, reason=reason)

    # -- config -----------------------------------------------------------------------

    def config_accepted(self, *, digest: str, generation: int, files: Sequence[Path]) -> None:
        self._write(
            "config_accepted",
            config_digest=digest,
            generation=generation,
            files=[str(f) for f in files],
        )

    def config_refused(
        self, *, candidate_digest: str, serving_digest: str, problems: Sequence[str]
    ) -> None:
        self._write(
            "config_refused",
            candidate_digest=candidate_digest,
            serving_digest=serving_digest,
            problems=list(problems),
        )

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def files_digest(directory: Path) -> str:
    """A digest of the YAML files under ``directory`` as they are now: names a
    refused change (which has no ``MeshSource`` digest) so it can be matched with
    the files an operator wrote."""
    digest = hashlib.sha256()
    for path, _, _ in dir_signature(directory):
        try:
            data = Path(path).read_bytes()
        except OSError:
            continue
        digest.update(path.encode() + b"\0" + data)
    return digest.hexdigest()[:12]
