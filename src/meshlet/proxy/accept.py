"""Listener setup for ``ProxyServer``: binding, the accept loops, TLS handshakes.

Listeners run their own accept loop (``loop.sock_accept``) rather than
``create_server``: the TLS context is read per handshake (a certificate reload
reaches new handshakes only, live connections are untouched), handshake
failures are seen and counted by reason, and PERMISSIVE mode can peek at the
first byte (0x16 = a TLS handshake record, RFC 8446 §5.1) without consuming it.
Opaque TCP services get their listeners from ``proxy/tcp.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from meshlet.config.bootstrap import Address, BootstrapConfig, MtlsMode
from meshlet.errors import ConfigError
from meshlet.proxy.driver_down import DownstreamConnection
from meshlet.proxy.exchange import Listener
from meshlet.proxy.tls import LoadedIdentity, handshake_failure_reason

if TYPE_CHECKING:
    from meshlet.proxy.hooks import InboundGate
    from meshlet.telemetry.metrics import GoldenMetrics

__all__ = ["ListenerSetup", "bind_listener", "peek_byte", "take_socket"]

logger = logging.getLogger("meshlet.proxy.server")  # the server's events, one logger name

_TLS_HANDSHAKE_BYTE = 0x16


class ListenerSetup:
    """The accept side of ``ProxyServer`` (a mixin: the state is the server's)."""

    if TYPE_CHECKING:
        config: BootstrapConfig
        metrics: GoldenMetrics
        inbound_listener: Listener | None
        _gate: InboundGate | None
        _socks: dict[str, socket.socket]
        _accepting: list[asyncio.Task[None]]
        _handshakes: set[asyncio.Task[None]]
        _tcp: list[Any]

        def _current(self) -> LoadedIdentity: ...

    async def _start_tcp_inbound(self, sock: socket.socket) -> None:
        from meshlet.proxy.tcp import TcpInboundListener

        inbound = self.config.inbound
        assert inbound is not None, "BUG: no inbound config"
        listener = TcpInboundListener(
            sock,
            app=inbound.app,
            mtls=inbound.mtls,
            identity=self._current,
            metrics=self.metrics,
            timeouts=self.config.timeouts,
            gate=self._gate,
            service=self.config.workload.name or "inbound",
        )
        await listener.start()
        self._tcp.append(listener)

    async def _start_tcp_outbound(self, given: dict[str, socket.socket], reuse_port: bool) -> None:
        outbound = self.config.outbound
        assert outbound is not None, "BUG: no outbound config"
        tcp_services = [s for s in outbound.services if s.protocol == "tcp"]
        if not tcp_services:
            return
        from meshlet.proxy.tcp import TcpOutboundListener

        for svc in tcp_services:
            if svc.listen is None:
                raise AssertionError("BUG: tcp service without listen passed validation")
            sock = take_socket(given, f"tcp:{svc.name}", svc.listen, reuse_port)
            self._socks[f"tcp:{svc.name}"] = sock
            listener = TcpOutboundListener(
                sock,
                service=svc,
                identity=self._current,
                metrics=self.metrics,
                timeouts=self.config.timeouts,
            )
            await listener.start()
            self._tcp.append(listener)

    def _spawn_accept(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        listener: Listener,
        mode: MtlsMode,
    ) -> None:
        sock.setblocking(False)
        task = loop.create_task(self._accept_loop(loop, sock, listener, mode))
        self._accepting.append(task)

    async def _accept_loop(
        self,
        loop: asyncio.AbstractEventLoop,
        lsock: socket.socket,
        listener: Listener,
        mode: MtlsMode,
    ) -> None:
        while True:
            try:
                sock, _ = await loop.sock_accept(lsock)
            except OSError as exc:  # EMFILE and friends: back off and keep serving
                logger.warning("accept_failed", extra={"error": str(exc)})
                await asyncio.sleep(0.1)
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if listener is self.inbound_listener and self.config.inbound is not None:
                mode = self.config.inbound.mtls  # apply_config may have changed it
            if mode is MtlsMode.DISABLE:
                await self._plain(loop, sock, listener)
                continue
            task = loop.create_task(self._secure(loop, sock, listener, mode))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _plain(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, listener: Listener
    ) -> None:
        try:
            await loop.connect_accepted_socket(lambda: DownstreamConnection(listener), sock)
        except OSError:
            sock.close()

    async def _secure(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        listener: Listener,
        mode: MtlsMode,
    ) -> None:
        timeout = self.config.timeouts.header_read_s
        if mode is MtlsMode.PERMISSIVE:
            try:
                first = await asyncio.wait_for(peek_byte(loop, sock), timeout)
            except (TimeoutError, OSError):
                sock.close()
                return
            if first is None:
                sock.close()
                return
            if first != _TLS_HANDSHAKE_BYTE:
                await self._plain(loop, sock, listener)
                return
        ctx = self._current().server
        proto = DownstreamConnection(listener, mtls=True)
        try:
            # uvloop returns its SSL wrapper as the protocol, so keep our own reference.
            transport, _ = await loop.connect_accepted_socket(
                lambda: proto,
                sock,
                ssl=ctx,
                ssl_handshake_timeout=timeout,
            )
        except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            self.metrics.tls_handshake_failure(handshake_failure_reason(exc))
            sock.close()
            return
        if proto.principal is None:
            self.metrics.tls_handshake_failure("no_spiffe_id")
            transport.abort()


def take_socket(
    given: dict[str, socket.socket], key: str, address: Address, reuse_port: bool
) -> socket.socket:
    """The pre-bound socket for ``key`` if one was handed in, else a new one."""
    sock = given.pop(key, None)
    return sock if sock is not None else bind_listener(address, reuse_port)


def bind_listener(address: Address, reuse_port: bool) -> socket.socket:
    """A listening socket; ConfigError (not a traceback) when the port is taken."""
    try:
        return socket.create_server(
            (address.host, address.port),
            backlog=1024,
            reuse_port=reuse_port,
            family=socket.AF_INET6 if ":" in address.host else socket.AF_INET,
        )
    except OSError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc.strerror or exc}") from exc


async def peek_byte(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> int | None:
    """The first byte the peer sent, without consuming it; None on EOF."""
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await readable
    finally:
        loop.remove_reader(sock.fileno())
    with contextlib.suppress(BlockingIOError):
        first = sock.recv(1, socket.MSG_PEEK)
        return first[0] if first else None
    return None
