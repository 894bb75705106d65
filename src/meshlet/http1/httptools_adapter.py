"""httptools (llhttp) behind the adapter seam: the fast, default parser.

llhttp does the byte-level work in C and calls back per element; the callbacks
build meshlet events and apply the shared head rules. The hot path keeps to
plain attribute access and list appends: no regexes, no ids, no copies of
bodies. httptools' exceptions become RemoteProtocolError in
``httptools_base.ParseErrors``. This module holds the request parser; the
response parser is in ``httptools_response``.
"""

from __future__ import annotations

import httptools

from meshlet.errors import RemoteProtocolError
from meshlet.http1.adapter import Adapter
from meshlet.http1.events import ConnectionClosed, EndOfMessage, Event, Request
from meshlet.http1.framing import Framing, analyze_request
from meshlet.http1.httptools_base import VERSIONS, ParseErrors, ParserBase, Stop
from meshlet.http1.httptools_response import HttptoolsResponseParser
from meshlet.http1.limits import Limits

__all__ = ["ADAPTER", "HttptoolsRequestParser", "HttptoolsResponseParser"]


class HttptoolsRequestParser(ParserBase):
    """Requests from a client; pipelined ones come out in order from one feed."""

    __slots__ = ("_errors", "_framing", "_parser", "_url")

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits, 400)
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._framing: Framing | None = None
        self._errors = ParseErrors(self, 400)

    def on_message_begin(self) -> None:
        if self._paused:
            if self._switching:
                self._error = RemoteProtocolError(
                    "data pipelined after a protocol switch request", status_hint=400
                )
            raise Stop
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
        version = VERSIONS.get(raw_version) or raw_version.encode("ascii")
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


ADAPTER = Adapter(
    name="httptools",
    request_parser=HttptoolsRequestParser,
    response_parser=HttptoolsResponseParser,
)
