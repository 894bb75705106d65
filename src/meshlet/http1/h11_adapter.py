"""h11 behind the adapter seam: the reference parser the test suite checks
the httptools adapter against.

h11 alone is more lenient than llhttp's strict mode (it unfolds obs-fold,
accepts bare LF, ignores chunk extensions, collapses ``Content-Length: 3, 3``),
so every line first passes the strict checks of ``meshlet.http1.strict`` and
bodies are framed by its readers. h11 then parses each complete head; its
result must agree with the strict front's field list, and the field values
are the bytes the peer sent, so the shared smuggling rules in ``framing.py``
see exactly what the httptools adapter's see. Slow by design; never the default.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import Protocol

import h11

from meshlet.errors import RemoteProtocolError
from meshlet.http1.adapter import Adapter
from meshlet.http1.events import (
    ConnectionClosed,
    EndOfMessage,
    Event,
    Headers,
    InformationalResponse,
    Request,
    Response,
)
from meshlet.http1.framing import (
    CHUNKED,
    LENGTH,
    UNTIL_CLOSE,
    Framing,
    analyze_request,
    analyze_response,
    parse_content_length,
)
from meshlet.http1.limits import Limits
from meshlet.http1.strict import (
    KNOWN_METHODS,
    TCHAR,
    ChunkedReader,
    FieldCounter,
    LengthReader,
    UntilCloseReader,
    parse_field_line,
    parse_request_line,
    parse_status_line,
)

_CRLF = b"\r\n"
_VISIBLE = bytes(range(0x21, 0x7F))
_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding"})
# Enough for any head the strict front lets through; the limits are ours.
_H11_MAX = 2**31


class _BodyReader(Protocol):
    trailers: Headers | None

    def read(self, buf: bytearray, events: list[Event]) -> bool: ...


class _H11Errors:
    """The one place h11 exceptions are translated (STYLE.md §5)."""

    __slots__ = ("_status_hint",)

    def __init__(self, status_hint: int) -> None:
        self._status_hint = status_hint

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, h11.ProtocolError):
            raise RemoteProtocolError(
                f"malformed HTTP: {exc}", status_hint=self._status_hint
            ) from exc


class _H11Base:
    """Head splitting, pausing and EOF, shared by both directions."""

    def __init__(self, limits: Limits, status_hint: int) -> None:
        self._limits = limits
        self._status_hint = status_hint
        self._errors = _H11Errors(status_hint)
        self._buf = bytearray()
        self._reader: _BodyReader | None = None
        self._framing: Framing | None = None
        self._in_message = False
        self._start: bytes | None = None
        self._fields: Headers = []
        self._lines: list[bytes] = []
        self._scanned = 0
        self._counter = FieldCounter(limits)
        self._pending: tuple[bytes, bytes] | None = None
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

    def _pump(self, events: list[Event]) -> None:
        while not self._paused and self._ready():
            reader = self._reader
            if reader is None:
                if not self._take_head():
                    return
                self._on_head(events)
            elif reader.read(self._buf, events):
                self._reader = None
                self._on_end(events, reader.trailers)
            else:
                return

    def _ready(self) -> bool:
        return True

    def _take_head(self) -> bool:
        """Validate the head's complete lines; True once the blank line arrived."""
        buf = self._buf
        if not self._in_message:
            # RFC 9112 §2.2: empty lines before a message are ignored (llhttp too).
            skip = 0
            while skip < len(buf) and buf[skip] in (0x0D, 0x0A):
                skip += 1
            del buf[:skip]
            if not buf:
                return False
            self._in_message = True
            self._start = None
            self._fields = []
            self._lines = []
            self._scanned = 0
            self._counter = FieldCounter(self._limits)
            self._pending = None
        while True:
            end = buf.find(_CRLF, self._scanned)
            if end < 0:
                tail = bytes(buf[self._scanned :])
                if self._start is not None:
                    self._next_line_begins(tail, complete=False)
                # A CR at the very end may be the first half of a CRLF.
                self._check_bare(tail[:-1] if tail.endswith(b"\r") else tail)
                if len(buf) > self._limits.max_head_bytes:
                    raise RemoteProtocolError("message head too large", status_hint=431)
                if self._start is None:
                    self._check_partial_start(bytes(buf))
                return False
            line = bytes(buf[self._scanned : end])
            self._scanned = end + 2
            if self._start is None:
                self._check_bare(line)
                self._check_start(line)
                self._start = line
                continue
            self._next_line_begins(line, complete=True)
            self._check_bare(line)
            if not line:
                self._commit()
                return True
            name, value = parse_field_line(line, self._status_hint)
            if name in _FRAMING_FIELDS:
                self._check_framing_field(name, value)
            self._pending = (name, value)
            self._fields.append((name, value))
            self._lines.append(line)

    def _next_line_begins(self, text: bytes, *, complete: bool) -> None:
        """llhttp counts a field only once the next field's name shows up: refuse
        obs-fold or a bad name there first, then apply the limits to the previous
        field (so both adapters report the same first error)."""
        if not text or text[0] in (0x0D, 0x0A):
            return
        if text[0] in (0x20, 0x09):
            raise RemoteProtocolError("obs-fold in message head", status_hint=self._status_hint)
        name, sep, _ = text.partition(b":")
        if name.translate(None, TCHAR) or (complete and not sep) or (sep and not name):
            raise RemoteProtocolError(
                f"invalid header name {name[:40]!r}", status_hint=self._status_hint
            )
        self._commit()

    def _check_framing_field(self, name: bytes, value: bytes) -> None:
        """llhttp checks Content-Length and its clash with Transfer-Encoding as
        each field arrives, not at the end of the head; so does the reference."""
        hint = self._status_hint
        seen = {field for field, _ in self._fields if field in _FRAMING_FIELDS}
        if name == b"content-length":
            parse_content_length(value, hint)
            if name in seen:
                raise RemoteProtocolError("duplicate Content-Length", status_hint=hint)
        if len(seen | {name}) == 2:
            raise RemoteProtocolError(
                "Content-Length together with Transfer-Encoding", status_hint=hint
            )

    def _commit(self) -> None:
        if self._pending is not None:
            self._counter.add(*self._pending)
            self._pending = None

    def _check_bare(self, text: bytes) -> None:
        """Refuse a bare CR or LF (RFC 9112 §2.2), after whatever llhttp, reading
        left to right, would have refused in the start line before it."""
        bad = min((i for i in (text.find(b"\r"), text.find(b"\n")) if i >= 0), default=-1)
        if bad < 0:
            return
        if self._start is None:
            self._check_partial_start(text[:bad])
        raise RemoteProtocolError("bare CR or LF in message head", status_hint=self._status_hint)

    def _check_partial_start(self, text: bytes) -> None:
        return None

    def _check_start(self, line: bytes) -> None:
        raise NotImplementedError

    def _on_head(self, events: list[Event]) -> None:
        raise NotImplementedError

    def _on_end(self, events: list[Event], trailers: Headers | None) -> None:
        raise NotImplementedError

    def _head_bytes(self, start: bytes) -> bytes:
        head = start + _CRLF + b"".join(line + _CRLF for line in self._lines) + _CRLF
        del self._buf[: self._scanned]
        self._scanned = 0
        return head

    def _fields_agree(self, parsed: list[tuple[bytes, bytes]]) -> Headers:
        """The strict front's fields, checked against h11's parse of the same head."""
        if [name for name, _ in parsed] != [name for name, _ in self._fields]:
            raise AssertionError("BUG: h11 and the strict front disagree on the fields")
        return self._fields

    def _body_reader(self, framing: Framing) -> _BodyReader | None:
        if framing.kind == LENGTH:
            return LengthReader(framing.length)
        if framing.kind == CHUNKED:
            return ChunkedReader(self._limits, self._status_hint)
        if framing.kind == UNTIL_CLOSE:
            return UntilCloseReader()
        return None


class H11RequestParser(_H11Base):
    """Requests from a client, pipelined ones in order."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits, 400)

    def feed(self, data: bytes) -> list[Event]:
        if self._paused:
            if self._switching:
                self._held += data
            return []
        self._buf += data
        events: list[Event] = []
        with self._errors:
            self._pump(events)
        return events

    def resume(self) -> list[Event]:
        if not self._paused or not self._switching:
            return []
        self._paused = self._switching = False
        self._buf = bytearray(self.take_held())
        events: list[Event] = []
        with self._errors:
            self._pump(events)
        return events

    def feed_eof(self) -> list[Event]:
        if self._in_message and not self._paused:
            raise RemoteProtocolError("connection closed mid-request", status_hint=400)
        return [ConnectionClosed()]

    def _check_partial_start(self, text: bytes) -> None:
        # Mirror llhttp, which checks the method first and the target's length
        # as the target streams in.
        method, sep, rest = text.partition(b" ")
        if not sep:
            return
        if method not in KNOWN_METHODS:
            raise RemoteProtocolError(f"invalid method {method!r}", status_hint=400)
        target = rest.lstrip(b" ").partition(b" ")[0]
        # llhttp refuses at the first byte a target that is not /, * or a scheme.
        first = target[:1]
        bad_start = method != b"CONNECT" and first not in (b"", b"/", b"*") and not first.isalpha()
        if bad_start or target.translate(None, _VISIBLE):
            raise RemoteProtocolError(f"invalid request-target {target[:40]!r}", status_hint=400)
        if len(target) > self._limits.max_target_bytes:
            raise RemoteProtocolError("request-target too long", status_hint=414)

    def _check_start(self, line: bytes) -> None:
        self._check_partial_start(line)
        method, target, version = parse_request_line(line)
        if len(target) > self._limits.max_target_bytes:
            raise RemoteProtocolError("request-target too long", status_hint=414)
        del method, version

    def _on_head(self, events: list[Event]) -> None:
        assert self._start is not None
        method, target, version = parse_request_line(self._start)
        framing = analyze_request(method, version, self._fields)
        canonical = b"%b %b HTTP/%b" % (method, target, version)
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_H11_MAX)
        connection.receive_data(self._head_bytes(canonical))
        event = connection.next_event()
        if not isinstance(event, h11.Request):
            raise AssertionError(f"BUG: h11 parsed a request head as {event!r}")
        headers = self._fields_agree(list(event.headers))
        self._framing = framing
        self.framings.append(framing)
        events.append(Request(event.method, event.target, headers, event.http_version))
        self._reader = self._body_reader(framing)
        if self._reader is None:
            self._on_end(events, None)

    def _on_end(self, events: list[Event], trailers: Headers | None) -> None:
        events.append(EndOfMessage(trailers))
        self._in_message = False
        self.completed += 1
        framing = self._framing
        if framing is not None and (framing.switch or not framing.keep_alive):
            self._paused = True
            self._switching = framing.switch
            self._held = bytes(self._buf) if framing.switch else b""
            self._buf = bytearray()


class H11ResponseParser(_H11Base):
    """Responses from a server, one exchange at a time."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits, 502)
        self._expecting = False
        self._method = b"GET"
        self._upgrade = False
        self.unsolicited = False

    def expect(self, method: bytes, *, upgrade: bool) -> None:
        self._expecting = True
        self._method = method
        self._upgrade = upgrade

    def _ready(self) -> bool:
        if self._expecting:
            return True
        if self._buf:
            self.unsolicited = True
            self._buf = bytearray()
        return False

    def feed(self, data: bytes) -> list[Event]:
        if self._paused:
            self._held += data
            return []
        self._buf += data
        events: list[Event] = []
        with self._errors:
            self._pump(events)
        return events

    def feed_eof(self) -> list[Event]:
        if self._paused or not (self._in_message or self._buf):
            return [ConnectionClosed()]
        if isinstance(self._reader, UntilCloseReader):
            self._reader = None
            self._on_end([], None)
            return [EndOfMessage(), ConnectionClosed()]
        raise RemoteProtocolError(
            "connection closed before the response completed", status_hint=502
        )

    def _check_start(self, line: bytes) -> None:
        parse_status_line(line)

    def _on_head(self, events: list[Event]) -> None:
        assert self._start is not None
        version, status, reason = parse_status_line(self._start)
        framing = analyze_response(
            status,
            version,
            self._fields,
            request_method=self._method,
            upgrade_requested=self._upgrade,
        )
        event = self._h11_parse(b"HTTP/%b %d %b" % (version, status, b"x"))
        headers = self._fields_agree(list(event.headers))
        self._in_message = False if status < 200 else self._in_message
        if status < 200:
            events.append(InformationalResponse(status, headers, reason))
            if framing.switch:
                self._pause_switch()
            return
        self._framing = framing
        self.framings.append(framing)
        events.append(Response(status, headers, reason, version))
        self._reader = self._body_reader(framing)
        if self._reader is None:
            self._on_end(events, None)

    def _h11_parse(self, canonical: bytes) -> h11.InformationalResponse | h11.Response:
        connection = h11.Connection(h11.CLIENT, max_incomplete_event_size=_H11_MAX)
        # h11 frames a response by the request it answers; a neutral one with an
        # Upgrade offer lets it parse any head, 101 included. Only the head is used.
        connection.send(
            h11.Request(
                method=b"GET",
                target=b"/",
                headers=[(b"host", b"h11"), (b"connection", b"upgrade"), (b"upgrade", b"x")],
            )
        )
        connection.send(h11.EndOfMessage())
        connection.receive_data(self._head_bytes(canonical))
        event = connection.next_event()
        if not isinstance(event, h11.InformationalResponse | h11.Response):
            raise AssertionError(f"BUG: h11 parsed a response head as {event!r}")
        return event

    def _pause_switch(self) -> None:
        self._paused = True
        self._switching = True
        self._held = bytes(self._buf)
        self._buf = bytearray()

    def _on_end(self, events: list[Event], trailers: Headers | None) -> None:
        events.append(EndOfMessage(trailers))
        self._in_message = False
        self._expecting = False
        self.completed += 1
        framing = self._framing
        if framing is not None and framing.switch:
            self._pause_switch()


ADAPTER = Adapter(
    name="h11",
    request_parser=H11RequestParser,
    response_parser=H11ResponseParser,
)
