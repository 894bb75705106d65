"""Used join tokens, remembered across control-plane restarts.

A join token is single-use. The ``TokenLedger`` that enforces it lives in
memory, so without this file a token captured from a shell history could be
replayed after the control plane restarts, until it expires. Each used token's
id and expiry is appended to ``<ca-dir>/control/used-tokens`` (0600); on start
the unexpired ones are loaded back. The file only grows by one short line per
enrolled sidecar and is rewritten without the expired entries at start.
"""

from __future__ import annotations

import os
from pathlib import Path

from meshlet.errors import IdentityError
from meshlet.identity.pemfiles import write_atomic
from meshlet.identity.tokens import TokenLedger

__all__ = ["load_ledger", "record_used"]

_MODE = 0o600


def load_ledger(path: Path, *, now: float) -> TokenLedger:
    """A ledger holding every unexpired token id recorded in ``path``."""
    ledger = TokenLedger()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return ledger
    kept: list[str] = []
    for line in lines:
        token_id, _, expiry = line.partition(" ")
        try:
            expires_at = float(expiry)
        except ValueError:
            continue  # a torn last line from a crash: that token is at worst usable again
        if expires_at > now and token_id not in ledger:
            ledger.consume(token_id, expires_at=expires_at, now=now)
            kept.append(line)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(f"{k}\n" for k in kept).encode(), mode=_MODE)
    return ledger


def record_used(path: Path, token_id: str, expires_at: float) -> None:
    """Append one used token; raise IdentityError if it cannot be recorded (the
    caller then refuses the enrolment rather than allow a later replay)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, _MODE)
        try:
            os.write(fd, f"{token_id} {expires_at}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise IdentityError(f"cannot record the used join token: {exc}") from exc
