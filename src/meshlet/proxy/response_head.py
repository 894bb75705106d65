"""Reading a response: the httptools parser's callbacks for an upstream
connection (a mixin of ``UpstreamConnection``, whose state it uses).

The response head is rewritten (``heads.response_head``) and written downstream
as soon as it is parsed; 1xx heads are relayed (never to an HTTP/1.0 client,
RFC 9110 §15.2) and a 101 starts a tunnel; body pieces go downstream as they
arrive, re-chunked when the upstream gave no length.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httptools

from meshlet.errors import UpstreamReset
from meshlet.proxy.exchange import Exchange, Listener
from meshlet.proxy.heads import response_head

__all__ = ["LAST_CHUNK", "ResponseReader"]

LAST_CHUNK = b"0\r\n\r\n"


class ResponseReader:
    """The response parser callbacks; the state is ``UpstreamConnection``'s."""

    if not TYPE_CHECKING:
        # No instance dict for the connection; hidden from mypy, which would
        # otherwise refuse assignments to the subclass's slots made here.
        __slots__ = ()
    else:
        chunked_down: bool
        connection: bytes | None
        deadline: float
        ex: Exchange | None
        has_length: bool
        headers: list[tuple[bytes, bytes]]
        idle_limit: float
        in_head: bool
        listener: Listener
        parser: httptools.HttpResponseParser
        quiet_since: float
        reason: bytes
        reset_parser: bool
        status: int
        until_close: bool
        upstream_chunked: bool

    def on_message_begin(self) -> None:
        self.headers = []
        self.reason = b""
        self.connection = None
        self.has_length = False
        self.upstream_chunked = False
        self.in_head = True

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:
            return  # trailer fields are dropped (documented)
        name = name.lower()
        if name == b"content-length":
            self.has_length = True
        elif name == b"transfer-encoding":
            self.upstream_chunked = True
            return
        elif name == b"connection":
            self.connection = value if self.connection is None else self.connection + b"," + value
            return
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        ex = self.ex
        assert ex is not None, "BUG: response without an exchange"
        status = self.parser.get_status_code()
        self.status = status
        conn = ex.conn
        if status < 200 and status != 101:
            # 100 Continue, 103 Early Hints: relayed; the final response follows.
            # RFC 9110 §15.2: never to an HTTP/1.0 client, which cannot parse them.
            if ex.version == b"1.0":
                return
            conn.write(
                response_head(
                    status,
                    self.reason,
                    self.headers,
                    connection=self.connection,
                    chunked=False,
                    close=False,
                )
            )
            return
        if status == 101:
            if ex.upgrade is None:
                self.parser = httptools.HttpResponseParser(self)  # unasked-for: refuse below
                raise UpstreamReset("101 Switching Protocols without an upgrade request")
            ex.status = 101
            self.deadline = 0.0
            conn.write(
                response_head(
                    101,
                    self.reason,
                    self.headers,
                    connection=self.connection,
                    chunked=False,
                    close=False,
                    upgrade=ex.upgrade,
                )
            )
            return
        ex.head_at = self.listener.monotonic()
        ctl = ex.ctl
        # The mixin is only ever an UpstreamConnection (no cast call on the hot path).
        if ctl is not None and ctl.on_response(ex, self, status):  # type: ignore[arg-type]
            return  # retried: this response is dropped (ctl detached and closed us)
        no_body = ex.head_only or status == 204 or status == 304
        self.until_close = not no_body and not self.has_length and not self.upstream_chunked
        chunked = not no_body and not self.has_length
        close = not ex.keep_alive or self.listener.draining
        if chunked and ex.version == b"1.0":
            chunked = False  # an HTTP/1.0 client reads until close
            close = True
        if close:
            ex.keep_alive = False
        self.chunked_down = chunked
        ex.status = status
        if ctl is None:
            self.deadline = 0.0
            self.idle_limit = self.listener.timeouts.idle_s
        else:  # the route's total timeout and stream idle timeout go on
            self.deadline = ctl.total_deadline
            self.idle_limit = ctl.idle_s
        self.quiet_since = self.listener.now
        conn.write(
            response_head(
                status,
                self.reason,
                self.headers,
                connection=self.connection,
                chunked=chunked,
                close=close,
            )
        )
        if ex.head_only:
            # httptools cannot be told the response to HEAD has no body; finish here
            # and give the next response a fresh parser.
            self.reset_parser = True
            conn.response_done(ex, upstream_reusable=True)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is None or ex.ended:
            return
        ex.resp_bytes += len(body)
        if self.chunked_down:
            ex.conn.write(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            ex.conn.write(body)

    def on_message_complete(self) -> None:
        if self.status < 200 or self.status == 101:
            return  # an informational response; the final one follows
        ex = self.ex
        if ex is None or ex.ended:
            return
        if self.chunked_down:
            ex.conn.write(LAST_CHUNK)
        ex.conn.response_done(ex, upstream_reusable=self.parser.should_keep_alive())
