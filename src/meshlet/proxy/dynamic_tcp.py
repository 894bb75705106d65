"""Dynamic mode's opaque TCP listeners, opened, changed and closed as snapshots change.

A ``protocol: tcp`` service has no Host header to route on, so the app reaches
each one on its own local port: ``--tcp NAME=HOST:PORT``, or port 0 on the
outbound host (the bound port is announced in the ready line, ``/config_dump``
and the ``tcp_listener_opened`` log event). ``ProxyServer`` reconfigures its
HTTP side in place but would need a rebind for these, so the dynamic sidecar
keeps them here, beside it, and changes them in two steps so that a snapshot is
applied whole or not at all:

- ``prepare`` binds the sockets of new services before anything changes (a
  port that is taken is the NACK reason, and nothing is left bound);
- ``commit`` starts them, gives services whose endpoints changed their new
  endpoints (live connections keep their upstream; new ones use the new set),
  and retires removed services: their port closes at once and their live
  connections get the drain time to end, as on shutdown.

Connections of the other services are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from meshlet.config.bootstrap import ServiceConfig, Timeouts
from meshlet.proxy.accept import bind_listener
from meshlet.proxy.tcp import TcpOutboundListener
from meshlet.proxy.tls import LoadedIdentity
from meshlet.telemetry.metrics import GoldenMetrics

__all__ = ["TcpChange", "TcpServices"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpChange:
    """What ``commit`` will do; the sockets of new services are already bound."""

    services: tuple[ServiceConfig, ...]
    bound: tuple[tuple[str, socket.socket], ...]
    removed: tuple[str, ...]


@dataclass(slots=True, kw_only=True)
class _Open:
    service: ServiceConfig  # as last applied (``listen`` as requested, maybe port 0)
    listener: TcpOutboundListener
    sock: socket.socket


class TcpServices:
    """The opaque TCP services a dynamic sidecar listens for, by name."""

    def __init__(
        self,
        *,
        identity: Callable[[], LoadedIdentity],
        metrics: GoldenMetrics,
        timeouts: Timeouts,
    ) -> None:
        self._identity = identity
        self._metrics = metrics
        self._timeouts = timeouts
        self._open: dict[str, _Open] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def prepare(self, services: Iterable[ServiceConfig]) -> TcpChange:
        """Bind what ``services`` adds; ConfigError (nothing left bound) if a
        port cannot be had."""
        wanted = {s.name: s for s in services}
        removed = tuple(
            name
            for name, live in self._open.items()
            if name not in wanted or wanted[name].listen != live.service.listen
        )
        bound: list[tuple[str, socket.socket]] = []
        try:
            for name, svc in wanted.items():
                if name in self._open and name not in removed:
                    continue
                assert svc.listen is not None, "BUG: tcp service without listen passed validation"
                bound.append((name, bind_listener(svc.listen, reuse_port=False)))
        except BaseException:
            for _, sock in bound:
                sock.close()
            raise
        return TcpChange(services=tuple(wanted.values()), bound=tuple(bound), removed=removed)

    def abort(self, change: TcpChange) -> None:
        """Undo ``prepare``: the rest of the snapshot was refused."""
        for _, sock in change.bound:
            sock.close()

    async def commit(self, change: TcpChange) -> None:
        """Make ``change`` live (after the HTTP side accepted the same snapshot)."""
        for name in change.removed:
            self._retire(name)
        fresh = dict(change.bound)
        for svc in change.services:
            sock = fresh.get(svc.name)
            if sock is not None:
                listener = TcpOutboundListener(
                    sock,
                    service=svc,
                    identity=self._identity,
                    metrics=self._metrics,
                    timeouts=self._timeouts,
                )
                await listener.start()
                self._open[svc.name] = _Open(service=svc, listener=listener, sock=sock)
                logger.info(
                    "tcp_listener_opened",
                    extra={"service": svc.name, "address": _fmt(listener.address)},
                )
            elif self._open[svc.name].service != svc:
                self._open[svc.name].listener.update_service(svc)
                self._open[svc.name].service = svc
                logger.info(
                    "tcp_endpoints_changed",
                    extra={"service": svc.name, "endpoints": len(svc.endpoints)},
                )

    def _retire(self, name: str) -> None:
        live = self._open.pop(name, None)
        if live is None:
            return
        live.listener.stop_accepting()
        live.sock.close()  # the port refuses new connections at once
        logger.info("tcp_listener_closed", extra={"service": name})
        task = asyncio.get_running_loop().create_task(live.listener.drain(self._timeouts.drain_s))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- what the sidecar shows --------------------------------------------------

    def addresses(self) -> dict[str, str]:
        """service -> the bound ``host:port`` its app connects to."""
        return {name: _fmt(live.listener.address) for name, live in self._open.items()}

    def describe(self) -> dict[str, Any]:
        """The services as ``/config_dump`` shows outbound services."""
        return {
            name: {
                "protocol": "tcp",
                "listen": _fmt(live.listener.address),
                "endpoints": [
                    {"address": str(ep.address), "identity": ep.identity, "labels": dict(ep.labels)}
                    for ep in live.service.endpoints
                ],
            }
            for name, live in self._open.items()
        }

    # -- stop --------------------------------------------------------------------------

    async def drain(self, deadline_s: float) -> None:
        """Stop accepting everywhere; live connections get ``deadline_s`` to end."""
        names = list(self._open)
        for name in names:
            self._retire(name)
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=deadline_s + 1.0)
        for task in list(self._retiring):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _fmt(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
