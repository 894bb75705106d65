"""Reading a request head: the httptools parser's callbacks for a downstream
connection (a mixin of ``DownstreamConnection``, whose state it uses).

The head is checked against the size and count limits while it arrives (431
before it is all in memory), the fields the proxy acts on (Host, Connection,
framing, Expect, Upgrade, forwarding fields) are kept aside in one table lookup
per field, and a finished head goes to the router, or waits its turn behind an
earlier request (pipelining, RFC 9112 §9.3.2).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from meshlet.errors import RemoteProtocolError
from meshlet.proxy.exchange import CHUNKED, LENGTH, Exchange, Listener
from meshlet.proxy.heads import connection_tokens

if TYPE_CHECKING:
    import httptools

__all__ = [
    "PAUSE_BACKPRESSURE",
    "PAUSE_PENDING",
    "PAUSE_PIPELINE",
    "PENDING_HIGH_WATER",
    "HeadTooLarge",
    "RequestHeadReader",
]

PAUSE_PIPELINE, PAUSE_BACKPRESSURE, PAUSE_PENDING = 1, 2, 4
# Body bytes held while no upstream is attached yet (connecting, or a policy
# check in flight) before reading pauses; one uvloop read is up to 256 KiB.
PENDING_HIGH_WATER = 256 * 1024

_HOST, _CONNECTION, _REQUEST_ID, _TE, _EXPECT, _UPGRADE, _XFF, _XFP, _XFCC, _CL = range(10)
_SPECIAL = {
    b"content-length": _CL,
    b"host": _HOST,
    b"connection": _CONNECTION,
    b"x-request-id": _REQUEST_ID,
    b"transfer-encoding": _TE,
    b"expect": _EXPECT,
    b"upgrade": _UPGRADE,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-proto": _XFP,
    b"x-forwarded-client-cert": _XFCC,
}


class HeadTooLarge(Exception):
    """Raised inside a parser callback to stop parsing an oversized head."""


class RequestHeadReader:
    """The parser callbacks; the state is ``DownstreamConnection``'s."""

    if not TYPE_CHECKING:
        # No instance dict for the connection; hidden from mypy, which would
        # otherwise refuse assignments to the subclass's slots made here.
        __slots__ = ()
    else:
        listener: Listener
        parser: httptools.HttpRequestParser
        parsing: Exchange | None
        active: Exchange | None
        queue: deque[Exchange]
        deadline: float
        head_bytes: int
        head_count: int
        url: bytes
        in_head: bool

        def pause(self, reason: int) -> None: ...
        def _next(self, ex: Exchange) -> None: ...

    def on_message_begin(self) -> None:
        self.deadline = self.listener.now + self.listener.timeouts.header_read_s
        self.head_bytes = 0
        self.head_count = 0
        self.url = b""
        self.in_head = True
        # The mixin is only ever a DownstreamConnection (no cast call on the hot path).
        self.parsing = Exchange(self, 0.0)  # type: ignore[arg-type]

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > self.listener.limits.max_header_bytes:
            raise HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # a chunked trailer field: not forwarded (documented)
        self.head_count += 1
        self.head_bytes += len(name) + len(value) + 4
        limits = self.listener.limits
        if self.head_count > limits.max_headers or self.head_bytes > limits.max_header_bytes:
            raise HeadTooLarge
        name = name.lower()
        ex = self.parsing
        assert ex is not None, "BUG: header outside a message"
        kind = _SPECIAL.get(name)
        if kind is None:
            ex.headers.append((name, value))
            return
        if kind == _HOST:
            if ex.host:
                raise RemoteProtocolError("more than one Host header")  # RFC 9112 §3.2
            ex.host = value
        elif kind == _CONNECTION:
            ex.connection = value if ex.connection is None else ex.connection + b"," + value
            return
        elif kind == _REQUEST_ID:
            ex.request_id = value
        elif kind == _TE:
            if value.strip().lower() != b"chunked":  # RFC 9112 §6.1: unknown coding
                raise RemoteProtocolError(
                    f"transfer-coding {value[:40]!r} not supported", status_hint=501
                )
            ex.framing = CHUNKED
            return
        elif kind == _CL:
            if ex.framing != CHUNKED:
                ex.framing = LENGTH
        elif kind == _EXPECT:
            ex.expect = value.strip().lower() == b"100-continue"
        elif kind == _UPGRADE:
            ex.upgrade = value
            return
        elif kind == _XFF:
            ex.xff = value if ex.xff is None else ex.xff + b", " + value
            return
        elif kind == _XFP:
            ex.xfp = value
            return
        elif kind == _XFCC:
            return  # only we may say who the client is; drop what it claims
        ex.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.parsing
        assert ex is not None, "BUG: headers outside a message"
        self.in_head = False
        self.deadline = 0.0
        parser = self.parser
        ex.method = parser.get_method()
        ex.target = self.url
        keep_alive = parser.should_keep_alive()
        if keep_alive and ex.connection is None:
            # With no Connection field llhttp keeps alive only a minor version > 0,
            # so this is not HTTP/1.0: get_http_version() formats a str per call
            # (~290 ns timeit); skipping it took the hot path (bench_proxy --hot-path,
            # 9 rounds, medians) from 8.00 to 7.84 µs outbound, 8.43 to 8.29 inbound.
            ex.version = b"1.1"
        else:
            ex.version = b"1.0" if parser.get_http_version() == "1.0" else b"1.1"
        ex.keep_alive = keep_alive and not self.listener.draining
        ex.started = self.listener.monotonic()
        ex.head_only = ex.method == b"HEAD"
        if ex.upgrade is not None:
            if b"upgrade" in connection_tokens(ex.connection):
                ex.keep_alive = False  # the connection becomes a tunnel or closes
            else:
                ex.upgrade = None
        if self.active is None:
            self.active = ex
            self.listener.router.start(ex)
        else:
            self.queue.append(ex)
            self.pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        assert ex is not None, "BUG: body outside a message"
        ex.req_bytes += len(body)
        if ex.ctl is not None and not ex.ctl.on_body(ex, body):
            return  # refused (413) or already answered
        if ex.pending is None:
            if ex.upstream is not None:
                ex.upstream.send_body(body)
            return
        ex.pending.append(body)
        ex.pending_bytes += len(body)
        if ex.pending_bytes > PENDING_HIGH_WATER:
            self.pause(PAUSE_PENDING)

    def on_message_complete(self) -> None:
        ex = self.parsing
        assert ex is not None, "BUG: end outside a message"
        self.parsing = None
        ex.req_done = True
        if ex.pending is None and ex.upstream is not None:
            ex.upstream.end_body()
        if ex.ctl is not None:
            ex.ctl.on_request_end(ex)
        if not ex.keep_alive:
            self.pause(PAUSE_PIPELINE)  # nothing after this request is read
        if ex.ended and ex is self.active:
            self._next(ex)
