"""Dynamic mode's audit log: one hash chain per sidecar process across policy pushes.

Static mode opens its audit log when it builds its one policy gate
(``authz.build_gate`` with the bootstrap's ``audit`` path). A dynamic sidecar
rebuilds the gate on every policy change, and a second writer on the same path
would start a second chain (``audit.jsonl.w1``: ``telemetry.audit`` never lets
two writers interleave one file). So the process opens one ``AuditLog`` here,
the configs it gives ``ProxyServer`` never name an audit path, and every gate
gets this log before any request reaches it: the first one when it is built,
later ones right after ``apply_config`` swapped them in (both synchronous, so
no request runs in between).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshlet.clock import Clock
from meshlet.config.bootstrap import BootstrapConfig

if TYPE_CHECKING:
    from meshlet.telemetry.audit import AuditLog

__all__ = ["first_gate", "install_audit", "open_audit"]

logger = logging.getLogger("meshlet.proxy.dynamic")


def open_audit(path: Path | None, *, clock: Clock) -> AuditLog | None:
    """The process's audit log at ``path`` (None: auditing is off)."""
    if path is None:
        return None
    from meshlet.telemetry.audit import AuditLog

    log = AuditLog(path, clock=clock)
    logger.info("audit_log_opened", extra={"path": str(log.path)})
    return log


def first_gate(config: BootstrapConfig, audit: AuditLog | None, *, clock: Clock) -> Any:
    """The policy gate the first snapshot asks for, writing to ``audit``; None
    when it names no policies (the authz engine is then never imported)."""
    if config.inbound is None or not config.inbound.policies:
        return None
    from meshlet.proxy import authz

    gate = authz.build_gate(config, clock=clock)
    if gate is not None and audit is not None:
        gate.audit = audit
    return gate


def install_audit(server: Any, audit: AuditLog | None) -> None:
    """Give the gate ``server.apply_config`` just built the process's audit log."""
    listener = server.inbound_listener if server is not None else None
    gate = getattr(listener.router, "gate", None) if listener is not None else None
    if gate is None or audit is None:
        return
    from meshlet.proxy.authz import PolicyGate

    if isinstance(gate, PolicyGate) and gate.audit is None:
        gate.audit = audit
