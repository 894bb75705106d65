"""httptools (llhttp) behind the adapter seam: the fast, default parser.

llhttp does the byte-level work in C and calls back per element; the callbacks
below build meshlet events and apply the shared head rules. The hot path keeps
to plain attribute access and list appends: no regexes, no ids, no copies of
bodies. httptools' exceptions become RemoteProtocolError in ``_ParseErrors``.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType

import httptools

from meshlet.errors import RemoteProtocolError
from meshlet.http1.adapter import Adapter
from meshlet.http1.events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    Request,
    Response,
)
from meshlet.http1.framing import UNTIL_CLOSE, Framing, analyze_request, analyze_response
from meshlet.http1.limits import Limits

_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
_OWS = b" \t"
_HEAD_END = b"\r\n\r\n"


class _Stop(Exception):
    """Raised from a callback to stop llhttp where the bytes stop being ours."""


class _ParseErrors:
    """The one place httptools exceptions are translated (STYLE.md §5).

    A RemoteProtocolError raised in one of our callbacks (a limit, a framing
    rule) wins over llhttp's generic "callback error"; errors after a point
    where the parser was told to stop reading are expected and swallowed.
    """

    __slots__ = ("_owner", "_status_hint")

    def __init__(self, owner: _Base, status_hint: int) -> None:
        self._owner = owner
        self._status_hint = status_hint

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, httptools.HttpParserError):
            return False
        owner = self._owner
        cause = owner._error
        if cause is not None:
            owner._error = None
            raise cause from exc
        if owner._discarding:
            return True
        raise RemoteProtocolError(f"malformed HTTP: {exc}", status_hint=self._status_hint) from exc


class _Base:
    """State and callbacks shared by both directions."""

    __slots__ = (
        "_discarding",
        "_error",
        "_events",
        "_fields",
        "_head_raw",
        "_head_started",
        "_header_budget",
        "_headers",
        "_held",
        "_in_head",
        "_in_message",
        "_limits",
        "_paused",
        "_status_hint",
        "_switching",
        "_trailers",
        "completed",
        "framings",
    )

    def __init__(self, limits: Limits, status_hint: int) -> None:
        self._limits = limits
        self._status_hint = status_hint
        self._events: list[Event] = []
        self._error: RemoteProtocolError | None = None
        self._discarding = False
        self._headers: Headers = []
        self._trailers: Headers | None = None
        self._fields: Headers | None = None
        self._header_budget = 0
        self._head_raw = 0
        self._head_started = False
        self._in_head = False
        self._in_message = False
        self._paused = False
        self._switching = False
        self._held = b""
        self.framings: deque[Framing] = deque()
        self.completed = 0

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def in_message(self) -> bool:
        return self._in_message

    def take_held(self) -> bytes:
        held, self._held = self._held, b""
        return held

    def _fail(self, message: str, status_hint: int) -> RemoteProtocolError:
        error = RemoteProtocolError(message, status_hint=status_hint)
        self._error = error
        return error

    def _begin(self) -> None:
        self._in_message = True
        self._in_head = True
        self._head_started = True
        self._headers = self._fields = []
        self._trailers = None
        self._header_budget = self._limits.max_header_bytes

    # httptools calls on_header once per complete field, trailers included; this
    # runs ~10 times per request, so it stays minimal.
    def on_header(self, name: bytes, value: bytes) -> None:
        # llhttp keeps trailing whitespace; RFC 9110 §5.5 says it is not part of the value.
        value = value.rstrip(_OWS)
        fields = self._fields
        if fields is None:
            # The first trailer field: trailers get their own budget.
            fields = self._fields = self._trailers = []
            self._header_budget = self._limits.max_header_bytes
        self._header_budget -= len(name) + len(value)
        if self._header_budget < 0 or len(fields) >= self._limits.max_headers:
            raise self._over_limit(fields)
        fields.append((name.lower(), value))

    def _over_limit(self, fields: Headers) -> RemoteProtocolError:
        limits = self._limits
        if len(fields) >= limits.max_headers:
            return self._fail(f"more than {limits.max_headers} header fields", 431)
        return self._fail(f"header section over {limits.max_header_bytes} bytes", 431)

    def on_body(self, body: bytes) -> None:
        self._events.append(Data(body))

    def _guard_head(self, size: int, completed_before: int) -> None:
        """Bound the memory an unfinished head can take across feeds.

        llhttp does not say where in a feed a head began; when no message ended
        in this feed, every byte of it belongs to the unfinished head, otherwise
        only later feeds are counted (so the bound is the limit plus one read).
        """
        if not self._in_head:
            self._head_raw = 0
            return
        if self._head_started:
            self._head_started = False
            self._head_raw = size if self.completed == completed_before else 0
        else:
            self._head_raw += size
        if self._head_raw > self._limits.max_head_bytes:
            raise RemoteProtocolError("message head too large", status_hint=431)


class HttptoolsRequestParser(_Base):
    """Requests from a client; pipelined ones come out in order from one feed."""

    __slots__ = ("_errors", "_framing", "_parser", "_url")

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits, 400)
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._framing: Framing | None = None
        self._errors = _ParseErrors(self, 400)

    def on_message_begin(self) -> None:
        if self._paused:
            if self._switching:
                self._error = RemoteProtocolError(
                    "data pipelined after a protocol switch request", status_hint=400
                )
            raise _Stop
        self._begin()
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url = url if not self._url else self._url + url
        if len(self._url) > self._limits.max_target_bytes:
            raise self._fail(f"request-target over {self._limits.max_target_bytes} bytes", 414)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._fields = None
        parser = self._parser
        raw_version = parser.get_http_version()
        version = _VERSIONS.get(raw_version) or raw_version.encode("ascii")
        method: bytes = parser.get_method()
        try:
            framing = analyze_request(method, version, self._headers)
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        self._framing = framing
        self.framings.append(framing)
        self._events.append(Request(method, self._url, self._headers, version))

    def on_message_complete(self) -> None:
        self._events.append(EndOfMessage(self._trailers))
        self._in_message = False
        self.completed += 1
        framing = self._framing
        if framing is not None and (framing.switch or not framing.keep_alive):
            self._paused = True
            self._switching = framing.switch
            self._discarding = not framing.switch

    def feed(self, data: bytes) -> list[Event]:
        if self._paused:
            if self._switching:
                self._held += data
            return []
        events = self._events = []
        completed = self.completed
        with self._errors:
            self._run(data)
            self._guard_head(len(data), completed)
        return events

    def _run(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
            if self._paused:
                if self._switching:
                    self._held = rest
                return
            # llhttp saw a switch our rules do not: carry on as HTTP.
            self._parser = httptools.HttpRequestParser(self)
            self._run(rest)

    def resume(self) -> list[Event]:
        if not self._paused or not self._switching:
            return []
        self._paused = self._switching = False
        self._parser = httptools.HttpRequestParser(self)
        events = self._events = []
        with self._errors:
            self._run(self.take_held())
        return events

    def feed_eof(self) -> list[Event]:
        if self._in_message and not self._paused:
            raise RemoteProtocolError("connection closed mid-request", status_hint=400)
        return [ConnectionClosed()]


class HttptoolsResponseParser(_Base):
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
        self._errors = _ParseErrors(self, 502)
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
            raise _Stop
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
        version = _VERSIONS.get(raw_version) or raw_version.encode("ascii")
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


ADAPTER = Adapter(
    name="httptools",
    request_parser=HttptoolsRequestParser,
    response_parser=HttptoolsResponseParser,
)
