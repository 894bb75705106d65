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
    analyze_request,
    analyze_response,
)
from meshlet.http1.h11_heads import H11Base
from meshlet.http1.limits import Limits
from meshlet.http1.strict import (
    KNOWN_METHODS,
    UntilCloseReader,
    parse_request_line,
    parse_status_line,
)

_VISIBLE = bytes(range(0x21, 0x7F))
# Enough for any head the strict front lets through; the limits are ours.
_H11_MAX = 2**31


class H11RequestParser(H11Base):
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


class H11ResponseParser(H11Base):
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
