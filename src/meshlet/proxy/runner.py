"""Run the sidecar process: ``meshlet proxy --config FILE [--workers N]``.

One worker = one uvloop event loop running a ``ProxyServer``, its admin server,
and one housekeeping task (identity-file polling, access-log flushing). SIGTERM
or SIGINT starts a drain: the listeners stop accepting, in-flight requests get
up to ``timeouts.drain_s`` to finish, then the process exits 0 (Kubernetes
sends SIGTERM and waits its grace period before SIGKILL).

When a worker is serving it prints one JSON line on standard output::

    {"event": "ready", "worker": 0, "pid": 123, "inbound": "127.0.0.1:15006",
     "outbound": "127.0.0.1:15001", "admin": "127.0.0.1:15000"}

so supervisors and tests learn bound ports (port 0 in the config) without
guessing or polling.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

from meshlet.clock import Clock, MonotonicClock
from meshlet.config.bootstrap import BootstrapConfig, load_bootstrap
from meshlet.proxy.memory import freeze_startup_heap, trim_heap, tune_malloc

if TYPE_CHECKING:
    from meshlet.proxy.admin import AdminServer
    from meshlet.telemetry.accesslog import AccessLog

logger = logging.getLogger(__name__)

# How often the housekeeping task looks at the identity files and the access-log
# buffer; see reload.py and accesslog.py for why one second is enough.
HOUSEKEEPING_INTERVAL_S = 1.0


def run_proxy(config_path: str, *, workers: int = 1) -> int:
    """Load the bootstrap and serve until SIGTERM/SIGINT; return the exit status."""
    # Before the first big allocation, so uvloop's read buffers stay on the heap.
    tune_malloc()
    config = load_bootstrap(config_path)
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if workers == 1:
        return run_worker(config, worker=0, sockets=None)
    from meshlet.proxy.workers import run_workers

    return run_workers(
        config, workers, lambda index, socks: run_worker(config, worker=index, sockets=socks)
    )


def run_worker(
    config: BootstrapConfig, *, worker: int, sockets: dict[str, socket.socket] | None
) -> int:
    """Run one worker's event loop on uvloop until it has drained."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(config, worker=worker, sockets=sockets))


async def serve(
    config: BootstrapConfig,
    *,
    worker: int = 0,
    sockets: dict[str, socket.socket] | None = None,
    clock: Clock | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Serve one worker until ``stop`` is set or SIGTERM/SIGINT arrives, then drain."""
    from meshlet.proxy.reload import IdentityReloader
    from meshlet.proxy.server import ProxyServer
    from meshlet.telemetry.metrics import GoldenMetrics

    clock = clock or MonotonicClock()
    stop = stop or asyncio.Event()
    metrics = GoldenMetrics(
        workload=config.workload.name or "unknown",
        namespace=config.workload.namespace or "unknown",
    )
    access_log = _open_access_log(config, clock)
    server = ProxyServer(config, metrics=metrics, clock=clock, **_server_extras(access_log))
    # Handlers first: a SIGTERM during start-up must drain, not kill the process.
    _install_signals(stop)
    listen_socks = {k: v for k, v in (sockets or {}).items() if k != "admin"}
    await server.start(listen_socks or None)
    admin = await _start_admin(config, server, metrics, clock, worker, sockets)
    preload_connect_path()
    freeze_startup_heap()
    trim_heap()  # start-up garbage back to the OS before the idle RSS is judged
    _announce(worker, server, admin)

    files = config.identity
    reloader = IdentityReloader((files.cert, files.key, files.bundle), server.reload_identity)
    housekeeping = asyncio.create_task(_housekeeping(stop, reloader, access_log))
    try:
        await stop.wait()
        logger.info("draining", extra={"deadline_s": config.timeouts.drain_s})
        if admin is not None:
            admin.draining = True
        await server.drain(config.timeouts.drain_s)
    finally:
        housekeeping.cancel()
        await asyncio.gather(housekeeping, return_exceptions=True)
        await server.close()
        if admin is not None:
            await admin.close()
        if access_log is not None:
            access_log.close()
    logger.info("stopped")
    return 0


def preload_connect_path() -> None:
    """Import now what the first upstream connection would import mid-request.

    uvloop's ``sock_connect`` passes the host through the ``idna`` codec, whose
    first use imports ``encodings.idna``, ``stringprep`` and ``unicodedata``:
    1.5 ms on a quiet machine, 12-34 ms measured on a loaded one, paid by the
    first request of each sidecar (both sides: the outbound's mTLS pool and the
    inbound's app pool), which is the cold start that ``meshlet bench`` times.
    Done before the heap is frozen, so the modules join the frozen generation.
    """
    "127.0.0.1".encode("idna")


def _open_access_log(config: BootstrapConfig, clock: Clock) -> AccessLog | None:
    if config.access_log is None:
        return None
    from meshlet.telemetry.accesslog import AccessLog

    return AccessLog.to_path(str(config.access_log), clock=clock)


def _server_extras(access_log: AccessLog | None) -> dict[str, Any]:
    """Optional ProxyServer arguments, passed only when set (keeps the contract
    signature working for servers built without an access log)."""
    return {} if access_log is None else {"access_log": access_log}


async def _start_admin(
    config: BootstrapConfig,
    server: Any,
    metrics: Any,
    clock: Clock,
    worker: int,
    sockets: dict[str, socket.socket] | None,
) -> AdminServer | None:
    if config.admin is None:
        return None
    from meshlet.proxy.admin import AdminServer

    admin = AdminServer(server, metrics, clock=clock, worker=worker)
    sock = (sockets or {}).get("admin")
    if sock is not None:
        await admin.start(sock=sock)
    else:
        port = 0 if config.admin.port == 0 else config.admin.port + worker
        await admin.start(config.admin.host, port)
    return admin


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            # Not the main thread (embedded in tests): the caller sets ``stop``.
            return


def _announce(worker: int, server: Any, admin: AdminServer | None) -> None:
    import os

    def fmt(addr: Any) -> str | None:
        return None if addr is None else f"{addr[0]}:{addr[1]}"

    line: dict[str, Any] = {
        "event": "ready",
        "worker": worker,
        "pid": os.getpid(),
        "inbound": fmt(getattr(server, "inbound_address", None)),
        "outbound": fmt(getattr(server, "outbound_address", None)),
        "admin": fmt(admin.address) if admin is not None else None,
    }
    outbound = server.config.outbound
    if outbound is not None:
        line["tcp"] = {
            svc.name: fmt(server.tcp_address(svc.name))
            for svc in outbound.services
            if svc.protocol == "tcp"
        }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def _housekeeping(stop: asyncio.Event, reloader: Any, access_log: AccessLog | None) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=HOUSEKEEPING_INTERVAL_S)
        except TimeoutError:
            reloader.poll()
            if access_log is not None:
                access_log.maybe_flush()
