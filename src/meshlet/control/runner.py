"""Run the control-plane process: ``meshlet control --config-dir D --ca-dir C``.

When it is serving it prints one JSON line on standard output::

    {"event": "ready", "listen": "127.0.0.1:15012",
     "spiffe_id": "spiffe://example.org/ns/meshlet-system/sa/control",
     "config_digest": "3f2a...", "audit": "ca/control/audit.jsonl"}

so supervisors and tests learn the bound port (``--listen 127.0.0.1:0``)
without guessing. SIGTERM or SIGINT stops it; proxies keep serving on their
last snapshot and certificate until it is back.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path

from meshlet.config.bootstrap import Address
from meshlet.errors import ConfigError
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId

__all__ = ["bind", "run_control", "serve_control"]


def bind(address: Address) -> socket.socket:
    """A listening socket; ConfigError (not a traceback) when the port is taken."""
    try:
        return socket.create_server(
            (address.host, address.port),
            backlog=1024,
            family=socket.AF_INET6 if ":" in address.host else socket.AF_INET,
        )
    except OSError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc.strerror or exc}") from exc


def run_control(
    *,
    config_dir: Path,
    ca_dir: Path,
    listen: Address,
    hold_s: float | None = None,
    audit: Path | None = None,
) -> int:
    """Load the CA and the config, serve until SIGTERM/SIGINT; return the exit status."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(
            serve_control(
                config_dir=config_dir, ca_dir=ca_dir, listen=listen, hold_s=hold_s, audit=audit
            )
        )


async def serve_control(
    *,
    config_dir: Path,
    ca_dir: Path,
    listen: Address,
    hold_s: float | None = None,
    stop: asyncio.Event | None = None,
    audit: Path | None = None,
) -> int:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT); ``audit`` is the path of
    the control plane's own audit log (docs/control.md), None for none."""
    from meshlet.clock import MonotonicClock
    from meshlet.control.server import ControlServer
    from meshlet.telemetry.audit import AuditLog

    ca = CertificateAuthority.load(ca_dir)
    log = AuditLog(audit, clock=MonotonicClock()) if audit is not None else None
    try:
        server = ControlServer(config_dir=config_dir, ca=ca, audit=log)
    except BaseException:
        if log is not None:
            log.close()
        raise
    if hold_s is not None:
        server.hold_s = hold_s
    sock = bind(listen)
    await server.start(sock)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            break  # not the main thread: the caller sets ``stop``
    address = server.address
    line = {
        "event": "ready",
        "listen": f"{address[0]}:{address[1]}" if address else None,
        "spiffe_id": str(SpiffeId.control_plane(ca.trust_domain)),
        "config_digest": server.store.current.digest,
        "audit": str(log.path) if log is not None else None,
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await server.close()
    return 0
