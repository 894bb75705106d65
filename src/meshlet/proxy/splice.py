"""Opaque TCP plumbing: copying bytes between two stream pairs, and the stream
helpers both TCP listeners use (wrapping a connected socket, with or without
TLS; connecting to an address; closing with a bound; peeking at the first byte).

The copy has backpressure: a direction reads only after its last write
drained, so a slow reader holds at most one 64 KiB chunk per direction in the
proxy. Half-close: an EOF is passed on where the other leg can carry it
(plaintext ``write_eof``) and the other direction keeps flowing; a TLS leg
cannot half-close in asyncio, so there an EOF ends the whole connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from dataclasses import dataclass

from meshlet.config.bootstrap import Address
from meshlet.telemetry.metrics import GoldenMetrics

__all__ = [
    "CHUNK_BYTES",
    "HANDSHAKE_TIMEOUT_S",
    "LiveSplice",
    "Splice",
    "TcpLabels",
    "close_stream",
    "connect_address",
    "wait_first_byte",
    "wrap_streams",
]

CHUNK_BYTES = 64 * 1024  # one read; also the most a direction buffers in the proxy
# TLS handshakes between sidecars take ~1 ms on loopback; 10 s (Envoy's
# transport_socket_connect_timeout default) only bounds stuck peers.
HANDSHAKE_TIMEOUT_S = 10.0


class Splice:
    """Copies bytes between two stream pairs until both directions end.

    An EOF is forwarded where the receiving leg can half-close (plaintext); then
    the other direction keeps flowing. Where it cannot (TLS in asyncio), the
    whole splice ends: the peer closed, and waiting for the other side to notice
    on its own would hold the connection for ``idle_s``. ``idle_s`` counts
    silence in *both* directions, so a long one-way stream is not cut.
    """

    __slots__ = ("_idle_s", "_last", "received", "sent")

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._last = 0.0
        self.received = 0  # downstream -> upstream (Istio: request direction)
        self.sent = 0  # upstream -> downstream (response direction)

    async def run(
        self,
        down: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self._last = asyncio.get_running_loop().time()
        forward = asyncio.create_task(self._pump(down[0], up[1], upstream=True))
        backward = asyncio.create_task(self._pump(up[0], down[1], upstream=False))
        pending: set[asyncio.Task[bool]] = {forward, backward}
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is not None or not task.result():
                        return
        finally:
            for task in (forward, backward):
                task.cancel()
            await asyncio.gather(forward, backward, return_exceptions=True)

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await asyncio.wait_for(reader.read(CHUNK_BYTES), timeout=self._idle_s)
            except TimeoutError:
                if loop.time() - self._last >= self._idle_s:
                    raise

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> bool:
        """Copy until EOF; True when the EOF could be passed on (half-close)."""
        loop = asyncio.get_running_loop()
        while data := await self._read(reader):
            self._last = loop.time()
            if upstream:
                self.received += len(data)
            else:
                self.sent += len(data)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
                return True
        return False


async def wrap_streams(
    conn: socket.socket, *, ssl_ctx: ssl.SSLContext | None, server_side: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Wrap an already-connected socket in streams, doing the TLS handshake."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK_BYTES, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    if server_side:
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol,
            conn,
            ssl=ssl_ctx,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if ssl_ctx else None,
        )
    else:
        transport, _ = await loop.create_connection(
            lambda: protocol,
            sock=conn,
            ssl=ssl_ctx,
            server_hostname="" if ssl_ctx else None,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S if ssl_ctx else None,
        )
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def wait_first_byte(conn: socket.socket, timeout_s: float) -> int | None:
    """Peek at the first byte without consuming it; None if the peer closed."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(conn.fileno(), wake)
    try:
        await asyncio.wait_for(readable, timeout=timeout_s)
    finally:
        loop.remove_reader(conn.fileno())
    first = conn.recv(1, socket.MSG_PEEK)
    return first[0] if first else None


async def connect_address(address: Address) -> socket.socket:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, sockaddr)
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# A TLS close waits for the peer's close_notify at most this long.
_CLOSE_TIMEOUT_S = 1.0


async def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close a stream and wait for its transport to finish closing (bounded)."""
    writer.close()
    with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
        await asyncio.wait_for(writer.wait_closed(), timeout=_CLOSE_TIMEOUT_S)


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpLabels:
    """The istio_tcp_* labels of one connection."""

    reporter: str
    source_principal: str
    destination_principal: str
    destination_service: str
    mtls: bool


class LiveSplice:
    """A spliced connection's labels and the bytes already reported for it."""

    __slots__ = ("labels", "reported_received", "reported_sent", "splice")

    def __init__(self, splice: Splice, labels: TcpLabels) -> None:
        self.splice = splice
        self.labels = labels
        self.reported_sent = 0
        self.reported_received = 0

    def report(self, metrics: GoldenMetrics) -> None:
        """Add the bytes moved since the last report to istio_tcp_*_bytes_total."""
        sent, received = self.splice.sent, self.splice.received
        if sent == self.reported_sent and received == self.reported_received:
            return
        labels = self.labels
        metrics.tcp_bytes(
            sent - self.reported_sent,
            received - self.reported_received,
            reporter=labels.reporter,
            source_principal=labels.source_principal,
            destination_principal=labels.destination_principal,
            destination_service=labels.destination_service,
            mtls=labels.mtls,
        )
        self.reported_sent, self.reported_received = sent, received
