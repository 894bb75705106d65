"""The httptools response parser: responses from an upstream, one exchange
at a time."""

from __future__ import annotations

import httptools

from meshlet.errors import RemoteProtocolError
from meshlet.http1.events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    InformationalResponse,
    Response,
)
from meshlet.http1.framing import UNTIL_CLOSE, Framing, analyze_response
from meshlet.http1.httptools_base import VERSIONS, ParseErrors, ParserBase, Stop
from meshlet.http1.limits import Limits

_HEAD_END = b"\r\n\r\n"


class HttptoolsResponseParser(ParserBase):
    """Responses from a server, one exchange at a time.

    llhttp cannot be told that a response answers HEAD or CONNECT, so those
    heads are cut at the blank line here and fed to a fresh parser alone.
    """

    __slots__ = (
        "_buffer",
        "_errors",
        "_expecting",
        "_fed",
        "_framing",
        "_head_only",
        "_informational",
        "_method",
        "_parser",
        "_reason",
        "_upgrade",
        "unsolicited",
    )

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits, 502)
        self._parser = httptools.HttpResponseParser(self)
        self._errors = ParseErrors(self, 502)
        self._expecting = False
        self._method = b"GET"
        self._upgrade = False
        self._head_only = False
        self._informational = False
        self._framing: Framing | None = None
        self._reason = b""
        self._buffer = b""
        self._fed = 0
        self.unsolicited = False

    def expect(self, method: bytes, *, upgrade: bool) -> None:
        self._expecting = True
        self._method = method
        self._upgrade = upgrade
        head_only = method in (b"HEAD", b"CONNECT")
        if head_only or self._head_only:
            self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only

    def on_message_begin(self) -> None:
        if not self._expecting:
            self.unsolicited = True
            self._discarding = True
            raise Stop
        self._begin()
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason = reason if not self._reason else self._reason + reason

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._fields = None
        parser = self._parser
        status: int = parser.get_status_code()
        raw_version = parser.get_http_version()
        version = VERSIONS.get(raw_version) or raw_version.encode("ascii")
        try:
            framing = analyze_response(
                status,
                version,
                self._headers,
                request_method=self._method,
                upgrade_requested=self._upgrade,
            )
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        if status < 200:
            self._informational = True
            self._switching = framing.switch
            self._events.append(InformationalResponse(status, self._headers, self._reason))
            return
        self._framing = framing
        self.framings.append(framing)
        self._events.append(Response(status, self._headers, self._reason, version))

    def on_body(self, body: bytes) -> None:
        if not self._head_only:
            self._events.append(Data(body))

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            self._in_message = False
            if self._switching:
                self._paused = True
            return
        if self._head_only:
            return
        self._finish()

    def _finish(self) -> None:
        self._events.append(EndOfMessage(self._trailers))
        self._in_message = False
        self._expecting = False
        self.completed += 1

    def feed(self, data: bytes) -> list[Event]:
        if self._paused:
            self._held += data
            return []
        if not self._expecting and not self._head_only:
            if data:
                self.unsolicited = True
            return []
        events = self._events = []
        completed = self.completed
        with self._errors:
            if self._head_only:
                self._feed_head_only(data)
            else:
                self._run(data)
            self._guard_head(len(data), completed)
        return events

    def _run(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self._paused:
                self._held = data[exc.args[0] :]
                return
            raise RemoteProtocolError("unexpected protocol switch", status_hint=502) from exc

    def _feed_head_only(self, data: bytes) -> None:
        buf = self._buffer + data if self._buffer else data
        while self._expecting:
            end = buf.find(_HEAD_END)
            if end < 0:
                # Feed what is new so malformed heads fail now, not at the blank line.
                self._run(buf[self._fed :])
                self._fed = len(buf)
                self._buffer = buf
                return
            end += 4
            self._run(buf[self._fed : end])
            buf = buf[end:]
            self._fed = 0
            self._parser = httptools.HttpResponseParser(self)
            if self._paused:
                break
            if self._in_message:
                # A final head: its body is empty whatever it says (RFC 9112 §6.3).
                self._finish()
                framing = self._framing
                if framing is not None and framing.switch:
                    self._paused = True
                    self._switching = True
                    self._held = buf
                    buf = b""
        self._buffer = b""
        if buf and not self._paused:
            self.unsolicited = True
        elif buf:
            self._held += buf

    def feed_eof(self) -> list[Event]:
        if self._paused or not (self._in_message or self._buffer):
            return [ConnectionClosed()]
        framing = self._framing
        if not self._in_head and framing is not None and framing.kind == UNTIL_CLOSE:
            self._finish()
            return [EndOfMessage(), ConnectionClosed()]
        raise RemoteProtocolError(
            "connection closed before the response completed", status_hint=502
        )
