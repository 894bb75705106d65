"""The upstream side of the relay: one pooled keep-alive connection to a peer
sidecar (mTLS) or to the local app (plain), parsing responses with httptools.

A connection carries one exchange at a time (no upstream pipelining: a slow
response would hold up the next). The response head is rewritten and written
downstream as soon as it is parsed, and every body piece is written downstream
as it arrives, so streamed responses (SSE, token streams) reach the client
chunk by chunk. Deadlines are fields checked by the listener's sweep, never a
timer per request. The response parser callbacks are in ``proxy/response_head.py``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httptools

from meshlet.errors import UpstreamReset, UpstreamTimeout
from meshlet.proxy import rescue as rescues
from meshlet.proxy.driver_down import PAUSE_BACKPRESSURE, PAUSE_PENDING
from meshlet.proxy.exchange import CHUNKED, NO_BODY, Exchange, Listener
from meshlet.proxy.response_head import LAST_CHUNK, ResponseReader

if TYPE_CHECKING:
    from meshlet.proxy.driver_down import DownstreamConnection
    from meshlet.proxy.pool import EndpointPool

__all__ = ["UpstreamConnection"]


class UpstreamConnection(ResponseReader, asyncio.Protocol):
    __slots__ = (
        "chunked_down",
        "closed",
        "connection",
        "cork",
        "deadline",
        "ex",
        "got_bytes",
        "has_length",
        "headers",
        "idle_limit",
        "in_head",
        "listener",
        "parser",
        "pool",
        "quiet_since",
        "read_paused",
        "reason",
        "req_chunked",
        "reset_parser",
        "reused",
        "seen_ticks",
        "status",
        "ticks",
        "transport",
        "tunnel",
        "until_close",
        "upgrade",
        "upstream_chunked",
    )

    def __init__(self, pool: EndpointPool, listener: Listener) -> None:
        self.pool = pool
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.connection: bytes | None = None
        self.has_length = False
        self.upstream_chunked = False
        self.chunked_down = False
        self.until_close = False
        self.in_head = False
        self.status = 0
        self.closed = False
        self.deadline = 0.0
        self.ticks = 0
        self.seen_ticks = 0
        self.quiet_since = 0.0
        self.idle_limit = 0.0
        self.tunnel: DownstreamConnection | None = None
        self.read_paused = False
        self.reset_parser = False
        self.reused = False
        self.got_bytes = False
        self.upgrade: bytes | None = None
        self.req_chunked = False
        self.cork: list[bytes] | None = None  # see DownstreamConnection.cork

    # -- transport callbacks ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's TLS transport is not an asyncio.Transport subclass.
        self.transport = transport  # type: ignore[assignment]
        self.listener.upstreams.add(self)

    def data_received(self, data: bytes) -> None:
        self.ticks += 1
        self.got_bytes = True
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.ex is None:
            self.close()  # bytes nobody asked for: the connection is not reusable
            return
        down = self.ex.conn
        down.cork = []
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            down.uncork()
            self._become_tunnel(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            self.listener.metrics.upstream_error("protocol")
            ex = self.ex
            self.close()
            if ex is not None:
                r = rescues.rescue(502, "upstream_protocol", "UPE", f"bad upstream response: {exc}")
                ex.conn.respond_rescue(ex, r)
            return
        finally:
            down.uncork()
        if self.reset_parser:
            self.reset_parser = False
            self.parser = httptools.HttpResponseParser(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener.upstreams.discard(self)
        self.pool.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
            return
        ex, self.ex = self.ex, None
        if ex is None or ex.ended:
            return
        if self.status >= 200 and self.until_close:
            # A close-delimited body (RFC 9112 §6.3 rule 8) ends here.
            if self.chunked_down:
                ex.conn.write(LAST_CHUNK)
            ex.keep_alive = ex.keep_alive and self.chunked_down
            ex.conn.response_done(ex, upstream_reusable=False)
            return
        if not self.got_bytes and self.reused and ex.framing == NO_BODY and ex.req_done:
            # The pooled connection was closed by the upstream's idle timer just as
            # we reused it; nothing was processed, so one retry is safe.
            ex.upstream = None
            ex.pending = []
            self.pool.forward(ex, retried=True)
            return
        self.listener.metrics.upstream_error("reset")
        ex.conn.respond_rescue(
            ex,
            rescues.from_error(
                UpstreamReset("upstream connection closed before the response completed")
            ),
        )

    def pause_writing(self) -> None:
        peer = self.tunnel or (self.ex.conn if self.ex is not None else None)
        if peer is not None:
            peer.pause(PAUSE_BACKPRESSURE)

    def resume_writing(self) -> None:
        peer = self.tunnel or (self.ex.conn if self.ex is not None else None)
        if peer is not None:
            peer.resume(PAUSE_BACKPRESSURE)

    def pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None and not self.closed:
            self.read_paused = False
            self.transport.resume_reading()

    # -- sending the request ------------------------------------------------

    def attach(self, ex: Exchange) -> None:
        """Carry ``ex``: send its head and whatever body arrived meanwhile."""
        assert self.transport is not None, "BUG: attach before connection_made"
        self.ex = ex
        ex.upstream = self
        self.status = 0
        self.got_bytes = False
        self.upgrade = ex.upgrade
        self.req_chunked = ex.framing == CHUNKED
        self.deadline = self.listener.now + self.listener.timeouts.upstream_response_s
        if ex.ctl is not None:
            self.deadline = ex.ctl.response_deadline(self.deadline)
        self.idle_limit = 0.0
        pending = ex.pending or ()
        ex.pending = None
        if ex.conn.feeding:  # the rest of this read (body, end) joins the head
            self.cork = []
            ex.conn.to_flush.append(self)
        if not pending and not (ex.req_done and self.req_chunked):
            self._write(ex.head)
        else:
            parts = [ex.head]
            for body in pending:
                if self.req_chunked:
                    parts.append(b"%x\r\n" % len(body))
                    parts.append(body)
                    parts.append(b"\r\n")
                else:
                    parts.append(body)
            if ex.req_done and self.req_chunked:
                parts.append(LAST_CHUNK)
            self._write(b"".join(parts))
        ex.pending_bytes = 0
        ex.conn.resume(PAUSE_PENDING)
        if ex.conn.write_paused:
            self.pause_reading()

    def _write(self, data: bytes) -> None:
        if self.cork is not None:
            self.cork.append(data)
        elif self.transport is not None and not self.closed:
            self.transport.write(data)

    def uncork(self) -> None:
        parts, self.cork = self.cork, None
        if parts and self.transport is not None and not self.closed:
            self.transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def send_body(self, body: bytes) -> None:
        if self.req_chunked:
            self._write(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            self._write(body)

    def end_body(self) -> None:
        if self.req_chunked:
            self._write(LAST_CHUNK)

    def write_raw(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    # -- lifecycle ------------------------------------------------------------

    def _become_tunnel(self, rest: bytes) -> None:
        ex = self.ex
        if ex is None or ex.status != 101:
            self.close()
            return
        self.ex = None
        ex.upstream = None
        ex.ended = True
        self.listener.router.finish(ex)
        down = ex.conn
        down.active = None
        self.tunnel = down
        self.idle_limit = 0.0
        self.deadline = 0.0
        if rest:
            down.write(rest)
        down.start_tunnel(self)

    def release(self, *, reusable: bool) -> None:
        """The exchange is over: back to the pool, or closed if it cannot be reused."""
        self.ex = None
        self.idle_limit = 0.0
        self.resume_reading()
        if reusable and not self.closed and not self.listener.draining:
            self.reused = True
            self.pool.release(self)
        else:
            self.close()

    def on_timeout(self) -> None:
        self.deadline = 0.0
        ex = self.ex
        if ex is None or ex.ended:
            self.close()  # idle in the pool too long
            return
        self.listener.metrics.upstream_error("timeout")
        self.close()
        what = "no response" if ex.status == 0 else "response stalled"
        ex.conn.respond_rescue(ex, rescues.from_error(UpstreamTimeout(f"upstream timeout: {what}")))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.cork = None
            self.listener.upstreams.discard(self)
            self.pool.discard(self)
            if self.transport is not None:
                self.transport.close()
