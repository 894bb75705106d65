"""Dynamic mode's audit log: one hash chain per sidecar process across policy pushes.

Static mode opens its audit log when it builds its one policy gate
(``authz.build_gate`` with the bootstrap's ``audit`` path). A dynamic sidecar
rebuilds the gate on every policy change, and a second writer on the same path
would start a second chain (``audit.jsonl.w1``: ``telemetry.audit`` never lets
two writers interleave one file). So the process opens one ``AuditLog`` here,
the configs it gives ``ProxyServer`` never name an audit path, and the server
is given the log (``ProxyServer(audit=...)``): every gate it builds, at start
and in ``apply_config``, writes to it, and none closes it. The process closes
it after the data plane has drained, so the last decisions are written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from meshlet.clock import Clock

if TYPE_CHECKING:
    from meshlet.telemetry.audit import AuditLog

__all__ = ["open_audit"]

logger = logging.getLogger("meshlet.proxy.dynamic")


def open_audit(path: Path | None, *, clock: Clock) -> AuditLog | None:
    """The process's audit log at ``path`` (None: auditing is off)."""
    if path is None:
        return None
    from meshlet.telemetry.audit import AuditLog

    log = AuditLog(path, clock=clock)
    logger.info("audit_log_opened", extra={"path": str(log.path)})
    return log
