"""``--workers N``: N forked processes sharing the listening ports.

The parent binds one socket per worker and listener, all with SO_REUSEPORT on
the same port (the first bind resolves port 0, the rest reuse the port it got),
then forks. Each worker accepts only on its own socket, so the kernel spreads
new connections across workers by hashing the 4-tuple instead of waking every
worker for every connection (the thundering herd of one shared socket).

Admin: one endpoint for the whole sidecar, on the configured address, served
by the parent (``workers_admin.py``): it asks each worker's own admin server,
which listens on a private, autobound abstract Unix socket, and merges the
answers. Every worker prints a JSON "ready" line on standard output naming the
shared listeners and that one admin address.

Memory: before forking, the parent imports what a worker will import and
freezes the heap (``gc.freeze``), with the collector off from there to the fork,
so the workers share those pages copy-on-write instead of each importing its
own copy, and no collection in a worker writes to (and so copies) a page of the
parent's objects. Figures: ``benchmarks/bench_workers.py``, docs/observability.md.

The parent forwards SIGTERM/SIGINT to the workers and waits (its admin answers
``/ready`` 503 from then on). If one worker dies on its own, the parent stops
the others and exits with that worker's status, so a supervisor (systemd,
kubelet, ``meshlet up``) restarts the whole sidecar rather than running with a
silent hole in its capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

from meshlet.config.bootstrap import Address, BootstrapConfig
from meshlet.proxy.admin import WorkerAdminSocket
from meshlet.proxy.workers_admin import WorkerLink, WorkersAdmin

logger = logging.getLogger(__name__)

# What one worker needs: its pre-bound sockets keyed "inbound", "outbound",
# "tcp:<service>" (opaque outbound services) and "admin" (its private listener).
WorkerSockets = dict[str, socket.socket]
ServeFn = Callable[[int, WorkerSockets], int]

_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
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


def bind_admin(address: Address, count: int) -> tuple[socket.socket, list[WorkerAdminSocket]]:
    """The sidecar's public admin socket (the parent serves it), and one private
    listener per worker on an autobound abstract Unix address: no file to clean
    up, no port to pick, and nothing left behind when the processes are gone."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    public = socket.create_server((address.host, address.port), family=family)
    public.setblocking(False)
    host, port = public.getsockname()[:2]
    private: list[WorkerAdminSocket] = []
    try:
        for _ in range(count):
            sock = WorkerAdminSocket(socket.AF_UNIX, socket.SOCK_STREAM)
            private.append(sock)
            sock.bind("")  # Linux autobind: a unique abstract name
            sock.listen(_LISTEN_BACKLOG)
            sock.setblocking(False)
            sock.advertised = (str(host), int(port))
    except OSError:
        public.close()
        for sock in private:
            sock.close()
        raise
    return public, private


def plan_sockets(
    config: BootstrapConfig, count: int
) -> tuple[list[WorkerSockets], socket.socket | None]:
    """Bind every listener for ``count`` workers; element *i* is worker *i*'s.
    The second value is the public admin socket, for the parent."""
    plan: list[WorkerSockets] = [{} for _ in range(count)]
    listeners: list[tuple[str, list[socket.socket]]] = []
    public_admin = None
    if config.inbound is not None:
        listeners.append(("inbound", bind_reuseport(config.inbound.listen, count)))
    if config.outbound is not None:
        listeners.append(("outbound", bind_reuseport(config.outbound.listen, count)))
        for service in config.outbound.services:
            if service.protocol == "tcp" and service.listen is not None:
                socks = bind_reuseport(service.listen, count)
                listeners.append((f"tcp:{service.name}", socks))
    if config.admin is not None:
        public_admin, private = bind_admin(config.admin, count)
        listeners.append(("admin", list(private)))
    for name, socks in listeners:
        for i, sock in enumerate(socks):
            plan[i][name] = sock
    return plan, public_admin


def preload(config: BootstrapConfig) -> int:
    """Import what every worker will import, then freeze the heap; returns the
    number of objects frozen. Call with the collector disabled (see run_workers)."""
    for name in preload_modules(config):
        importlib.import_module(name)
    gc.freeze()
    return gc.get_freeze_count()


def preload_modules(config: BootstrapConfig) -> list[str]:
    """The modules a worker of ``config`` imports lazily, found by diffing
    ``sys.modules`` before and after a worker's start-up, per feature: the
    policy gate alone brings pydantic, cryptography and PyJWT (about 200
    modules), which every worker would otherwise import on its own."""
    names = list(_PRELOAD)
    inbound, outbound = config.inbound, config.outbound
    if inbound is not None and inbound.policies:
        names.append("meshlet.proxy.authz")
    tcp = inbound is not None and inbound.protocol == "tcp"
    if outbound is not None:
        tcp = tcp or any(service.protocol == "tcp" for service in outbound.services)
        if outbound.routing:
            names += ["meshlet.proxy.routing", "meshlet.traffic.loader", "meshlet.traffic.router"]
    if tcp:
        names.append("meshlet.proxy.tcp")
    if config.audit is not None:
        names.append("meshlet.telemetry.audit")
    if config.access_log is not None:
        names.append("meshlet.telemetry.accesslog")
    return names


_PRELOAD = (
    "uvloop",
    "httptools",
    "encodings.idna",  # the first getaddrinfo of a str host
    "meshlet.proxy.server",
    "meshlet.proxy.reload",
    "meshlet.proxy.admin",
    "meshlet.telemetry.metrics",
)


def run_workers(config: BootstrapConfig, count: int, serve: ServeFn) -> int:
    """Fork ``count`` workers running ``serve(i, sockets)``; return the exit status."""
    # No collection between the imports and the fork: a collection would free
    # objects in the middle of pages the workers are about to share, and the
    # first allocation into such a hole in a worker copies the page (the
    # recipe of the gc.freeze documentation).
    gc.disable()
    # Held back from here until the parent's event loop handles them: a SIGTERM
    # in between would otherwise kill the parent and orphan the workers.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        frozen = preload(config)
        plan, public_admin = plan_sockets(config, count)
        children: dict[int, int] = {}  # pid -> worker index
        for index in range(count):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child; tested end to end
                gc.enable()
                _child(index, plan, public_admin, serve)
            children[pid] = index
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        raise
    finally:
        gc.enable()
    links = [
        WorkerLink(index=index, pid=pid, address=plan[index]["admin"].getsockname())
        for pid, index in children.items()
        if "admin" in plan[index]
    ]
    for sockets in plan:  # the children hold their own copies
        for sock in sockets.values():
            sock.close()
    logger.info("workers_started", extra={"count": count, "frozen_objects": frozen})
    return asyncio.run(_supervise(children, public_admin, links))


def _child(
    index: int,
    plan: list[WorkerSockets],
    public_admin: socket.socket | None,
    serve: ServeFn,
) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    if public_admin is not None:
        public_admin.close()
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


class _Supervisor:
    """Reaps workers, forwards stop signals, and decides the exit status."""

    def __init__(self, children: dict[int, int], admin: WorkersAdmin) -> None:
        self.children = children
        self.admin = admin
        self.stopping = False
        self.status = 0
        self.done = asyncio.Event()

    def forward(self, signum: int) -> None:
        self.stopping = True
        self.admin.draining = True
        for pid in self.children:
            _kill(pid, signum)

    def reap(self) -> None:
        while self.children:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index = self.children.pop(pid, None)
            if index is None:
                continue
            self.admin.worker_exited(index)
            code = os.waitstatus_to_exitcode(wait_status)
            if code != 0:
                self.status = self.status or (code if code > 0 else 128 - code)
                if not self.stopping:
                    logger.error("worker_exited", extra={"worker": index, "status": code})
                    self.forward(signal.SIGTERM)
        if not self.children:
            self.done.set()


async def _supervise(
    children: dict[int, int], public_admin: socket.socket | None, links: list[WorkerLink]
) -> int:
    admin = WorkersAdmin(links)
    supervisor = _Supervisor(children, admin)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGCHLD, supervisor.reap)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, supervisor.forward, sig)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # now handled
    try:
        if public_admin is not None:
            await admin.start(sock=public_admin)
        supervisor.reap()  # a worker that exited before the handler was installed
        await supervisor.done.wait()
    finally:
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await admin.close()
    return supervisor.status


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
