"""Opaque TCP mode (``protocol: tcp``): mTLS and identity, bytes spliced both ways.

For gRPC (HTTP/2), databases and anything that is not HTTP/1.1 the sidecar does
not parse the stream: it terminates or originates mTLS, checks the peer's SPIFFE
ID (against the endpoint's expected identity outbound; through
``InboundGate.check_connection`` inbound) and copies bytes with backpressure: a
direction reads only after its last write drained, so a slow reader holds at
most one 64 KiB chunk per direction in the proxy.

Listeners own their accept loop (``loop.sock_accept``) instead of
``create_server`` so that a connection's TLS context is read at handshake time
(a certificate reload affects only new handshakes) and so PERMISSIVE mode can
peek at the first byte (0x16 = TLS handshake record, RFC 8446 §5.1) before
choosing TLS or plaintext.

The byte copy, its half-close rules and the stream helpers are in
``proxy/splice.py``.
Byte counts reach ``istio_tcp_*`` every 15 s while a connection is open and
when it closes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import ssl
from collections.abc import Callable

from meshlet.config.bootstrap import Address, MtlsMode, ServiceConfig, Timeouts
from meshlet.proxy.hooks import InboundGate, RequestInfo
from meshlet.proxy.splice import (
    CHUNK_BYTES,
    LiveSplice,
    Splice,
    TcpLabels,
    close_stream,
    connect_address,
    wait_first_byte,
    wrap_streams,
)
from meshlet.proxy.tls import LoadedIdentity, handshake_failure_reason, peer_spiffe_id
from meshlet.telemetry.metrics import GoldenMetrics

__all__ = ["REPORT_INTERVAL_S", "IdentitySource", "TcpInboundListener", "TcpOutboundListener"]

logger = logging.getLogger(__name__)

_TLS_HANDSHAKE_BYTE = 0x16
# Istio's tcp_reporting_duration default: bytes of open connections every 15 s.
REPORT_INTERVAL_S = 15.0

IdentitySource = Callable[[], LoadedIdentity]


class _TcpListener:
    """Accept loop, connection tracking and drain shared by both directions."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        metrics: GoldenMetrics,
        timeouts: Timeouts,
        report_interval_s: float = REPORT_INTERVAL_S,
    ) -> None:
        self._report_interval_s = report_interval_s
        self._reporting: asyncio.Task[None] | None = None
        self._live: set[LiveSplice] = set()
        sock.setblocking(False)
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self._address = (str(host), int(port))
        # Accepted sockets a transport has taken over: the transport closes them.
        self._adopted: set[socket.socket] = set()
        self._metrics = metrics
        self._timeouts = timeouts
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self._accepting = asyncio.create_task(self._accept_loop())
        self._reporting = asyncio.create_task(self._report_loop())

    async def _report_loop(self) -> None:
        """Report bytes of long-lived connections periodically, as Istio does
        (``tcp_reporting_duration``), not only when they close."""
        while True:
            await asyncio.sleep(self._report_interval_s)
            for live in list(self._live):
                live.report(self._metrics)

    async def _run_splice(
        self,
        labels: TcpLabels,
        down: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        common = {
            "reporter": labels.reporter,
            "source_principal": labels.source_principal,
            "destination_principal": labels.destination_principal,
            "destination_service": labels.destination_service,
        }
        self._metrics.tcp_opened(**common, mtls=labels.mtls)
        live = LiveSplice(Splice(self._timeouts.idle_s), labels)
        self._live.add(live)
        try:
            await live.splice.run(down, up)
        finally:
            self._live.discard(live)
            await close_stream(up[1])
            live.report(self._metrics)
            self._metrics.tcp_closed(**common, mtls=labels.mtls)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self._sock)
            except OSError as exc:  # EMFILE and friends: back off, keep serving
                logger.warning("tcp_accept_failed", extra={"error": str(exc)})
                await asyncio.sleep(0.1)
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._guarded(conn, peer))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _guarded(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            await self._handle(conn, peer)
        except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            logger.debug("tcp_connection_ended", extra={"error": repr(exc)})
        finally:
            if conn in self._adopted:
                self._adopted.discard(conn)
            else:
                conn.close()

    async def _wrap(
        self, conn: socket.socket, *, ssl_ctx: ssl.SSLContext | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Hand an accepted socket to a transport (doing the TLS handshake)."""
        streams = await wrap_streams(conn, ssl_ctx=ssl_ctx, server_side=True)
        self._adopted.add(conn)
        return streams

    async def _handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        raise NotImplementedError

    def stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None

    async def drain(self, deadline_s: float) -> None:
        """Stop accepting; give live connections ``deadline_s`` to end, then cut them."""
        self.stop_accepting()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=deadline_s)
        await self.close()

    async def close(self) -> None:
        self.stop_accepting()
        if self._reporting is not None:
            self._reporting.cancel()
            self._reporting = None
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        self._sock.close()


class TcpInboundListener(_TcpListener):
    """Terminates mTLS from peers and splices to the local app."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        app: Address,
        mtls: MtlsMode,
        identity: IdentitySource,
        metrics: GoldenMetrics,
        timeouts: Timeouts,
        gate: InboundGate | None = None,
        service: str = "inbound",
        report_interval_s: float = REPORT_INTERVAL_S,
    ) -> None:
        super().__init__(
            sock, metrics=metrics, timeouts=timeouts, report_interval_s=report_interval_s
        )
        self._app = app
        self._mtls = mtls
        self._identity = identity
        self._gate = gate
        self._service = service

    async def _handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        use_tls = self._mtls is MtlsMode.STRICT
        if self._mtls is MtlsMode.PERMISSIVE:
            first = await wait_first_byte(conn, self._timeouts.header_read_s)
            if first is None:
                return
            use_tls = first == _TLS_HANDSHAKE_BYTE
        identity = self._identity()
        try:
            down = await self._wrap(conn, ssl_ctx=identity.server if use_tls else None)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            if use_tls:
                self._metrics.tls_handshake_failure(handshake_failure_reason(exc))
            return
        try:
            await self._serve(down, peer, identity, use_tls)
        finally:
            await close_stream(down[1])

    async def _serve(
        self,
        down: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        peer: tuple[str, int],
        identity: LoadedIdentity,
        mtls: bool,
    ) -> None:
        principal = peer_spiffe_id(down[1].get_extra_info("ssl_object")) if mtls else None
        if mtls and principal is None:
            self._metrics.tls_handshake_failure("no_spiffe_id")
            return
        local = down[1].get_extra_info("sockname") or ("", 0)
        if self._gate is not None:
            info = RequestInfo(
                method="", path="", host="", headers=[], source_principal=principal,
                source_ip=peer[0], source_port=peer[1], destination_ip=str(local[0]),
                destination_port=int(local[1]), sni=None, mtls=mtls, request_id="",
            )  # fmt: skip
            verdict = self._gate.check_connection(info)
            if not verdict.allowed:
                logger.info("tcp_connection_denied", extra={"peer": principal,
                                                            "reason": verdict.reason})  # fmt: skip
                return
        labels = TcpLabels(
            reporter="destination",
            source_principal=principal or "",
            destination_principal=identity.spiffe_id,
            destination_service=self._service,
            mtls=mtls,
        )
        try:
            up = await asyncio.wait_for(
                asyncio.open_connection(self._app.host, self._app.port, limit=CHUNK_BYTES),
                timeout=self._timeouts.connect_s,
            )
        except (OSError, TimeoutError) as exc:
            self._metrics.upstream_error("timeout" if isinstance(exc, TimeoutError) else "connect")
            return
        await self._run_splice(labels, down, up)


class TcpOutboundListener(_TcpListener):
    """Accepts the app's plaintext connections for one ``protocol: tcp`` service
    and splices them over mTLS to one of its endpoints, checking its identity."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        service: ServiceConfig,
        identity: IdentitySource,
        metrics: GoldenMetrics,
        timeouts: Timeouts,
        report_interval_s: float = REPORT_INTERVAL_S,
    ) -> None:
        super().__init__(
            sock, metrics=metrics, timeouts=timeouts, report_interval_s=report_interval_s
        )
        self._service = service
        self._identity = identity
        self._order = itertools.cycle(range(len(service.endpoints)))

    def update_service(self, service: ServiceConfig) -> None:
        """New endpoints for new connections; live ones keep their upstream
        (dynamic mode: a control-plane snapshot changed this service)."""
        self._service = service
        self._order = itertools.cycle(range(len(service.endpoints)))

    async def _handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        up = await self._connect_upstream()
        if up is None:
            return
        streams, expected, identity = up
        try:
            down = await self._wrap(conn, ssl_ctx=None)
        except BaseException:
            await close_stream(streams[1])
            raise
        labels = TcpLabels(
            reporter="source",
            source_principal=identity.spiffe_id,
            destination_principal=expected,
            destination_service=self._service.name,
            mtls=True,
        )
        try:
            await self._run_splice(labels, down, streams)
        finally:
            await close_stream(down[1])

    async def _connect_upstream(
        self,
    ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], str, LoadedIdentity] | None:
        """Try each endpoint once, round-robin start; None when all fail."""
        start = next(self._order)
        endpoints = self._service.endpoints
        for i in range(len(endpoints)):
            endpoint = endpoints[(start + i) % len(endpoints)]
            identity = self._identity()
            try:
                sock = await asyncio.wait_for(
                    connect_address(endpoint.address), timeout=self._timeouts.connect_s
                )
            except (OSError, TimeoutError) as exc:
                kind = "timeout" if isinstance(exc, TimeoutError) else "connect"
                self._metrics.upstream_error(kind)
                continue
            try:
                streams = await wrap_streams(sock, ssl_ctx=identity.client, server_side=False)
            except (ssl.SSLError, OSError, TimeoutError) as exc:
                sock.close()
                self._metrics.tls_handshake_failure(handshake_failure_reason(exc))
                continue
            got = peer_spiffe_id(streams[1].get_extra_info("ssl_object"))
            if got != endpoint.identity:
                logger.warning("upstream_identity_mismatch",
                               extra={"expected": endpoint.identity, "got": got})  # fmt: skip
                self._metrics.tls_handshake_failure("wrong_identity")
                await close_stream(streams[1])
                continue
            return streams, endpoint.identity, identity
        return None
