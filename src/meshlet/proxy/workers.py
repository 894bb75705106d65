"""``--workers N``: N forked processes sharing the listening ports.

The parent binds one socket per worker and listener, all with SO_REUSEPORT on
the same port (the first bind resolves port 0, the rest reuse the port it got),
then forks. Each worker accepts only on its own socket, so the kernel spreads
new connections across workers by hashing the 4-tuple instead of waking every
worker for every connection (the thundering herd of one shared socket).

Admin: each worker runs its own admin server, because metrics live in the
worker's memory. With ``admin: host:P`` worker *i* listens on ``P + i``; with
port 0 each worker gets its own ephemeral port. Every worker prints its
addresses on a JSON "ready" line on standard output.

The parent forwards SIGTERM/SIGINT to the workers and waits. If one worker
dies on its own, the parent stops the others and exits with that worker's
status, so a supervisor (systemd, kubelet, ``meshlet up``) restarts the whole
sidecar rather than running with a silent hole in its capacity.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

from meshlet.config.bootstrap import Address, BootstrapConfig

logger = logging.getLogger(__name__)

# What one worker needs: its pre-bound sockets keyed "inbound", "outbound",
# "tcp:<service>" (opaque outbound services) and "admin".
WorkerSockets = dict[str, socket.socket]
ServeFn = Callable[[int, WorkerSockets], int]

_LISTEN_BACKLOG = 1024  # as Envoy and nginx (511) do: SYN bursts at start-up


def bind_reuseport(address: Address, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port with SO_REUSEPORT."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    socks: list[socket.socket] = []
    port = address.port
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address.host, port))
            sock.listen(_LISTEN_BACKLOG)
            sock.setblocking(False)
            port = sock.getsockname()[1]
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def bind_admin(address: Address, count: int) -> list[socket.socket]:
    """One admin socket per worker: port ``P + i``, or an ephemeral port each."""
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            port = 0 if address.port == 0 else address.port + i
            sock = socket.create_server((address.host, port), reuse_port=False)
            sock.setblocking(False)
            socks.append(sock)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def plan_sockets(config: BootstrapConfig, count: int) -> list[WorkerSockets]:
    """Bind every listener for ``count`` workers; element *i* is worker *i*'s."""
    plan: list[WorkerSockets] = [{} for _ in range(count)]
    listeners: list[tuple[str, list[socket.socket]]] = []
    if config.inbound is not None:
        listeners.append(("inbound", bind_reuseport(config.inbound.listen, count)))
    if config.outbound is not None:
        listeners.append(("outbound", bind_reuseport(config.outbound.listen, count)))
        for service in config.outbound.services:
            if service.protocol == "tcp" and service.listen is not None:
                socks = bind_reuseport(service.listen, count)
                listeners.append((f"tcp:{service.name}", socks))
    if config.admin is not None:
        listeners.append(("admin", bind_admin(config.admin, count)))
    for name, socks in listeners:
        for i, sock in enumerate(socks):
            plan[i][name] = sock
    return plan


def run_workers(config: BootstrapConfig, count: int, serve: ServeFn) -> int:
    """Fork ``count`` workers running ``serve(i, sockets)``; return the exit status."""
    plan = plan_sockets(config, count)
    children: dict[int, int] = {}  # pid -> worker index
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child; tested end to end
            _child(index, plan, serve)
        children[pid] = index
    for sockets in plan:  # the children hold their own copies
        for sock in sockets.values():
            sock.close()
    logger.info("workers_started", extra={"count": count})
    return _supervise(children)


def _child(index: int, plan: list[WorkerSockets], serve: ServeFn) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    for other, sockets in enumerate(plan):
        if other != index:
            for sock in sockets.values():
                sock.close()
    status = 1
    try:
        status = serve(index, plan[index])
    except BaseException:  # the child must never return into the parent's code
        logger.exception("worker_crashed", extra={"worker": index})
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _supervise(children: dict[int, int]) -> int:
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            _kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        while children:
            pid, wait_status = os.waitpid(-1, 0)
            if pid not in children:
                continue
            index = children.pop(pid)
            code = os.waitstatus_to_exitcode(wait_status)
            if code != 0:
                status = status or (code if code > 0 else 128 - code)
                if not stopping:
                    logger.error("worker_exited", extra={"worker": index, "status": code})
                    stopping = True
                    for other in children:
                        _kill(other, signal.SIGTERM)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
