"""The sans-IO HTTP/1.1 codec: bytes in, events out; events in, bytes out.

``ServerCodec`` reads requests and writes responses, ``ClientCodec`` writes
requests and reads responses. Neither sees a socket or a clock: the driver
feeds what it read, writes what ``send`` returns, and owns deadlines.

Cycles reset by themselves: there is no ``start_next_cycle()``. A server codec
parses pipelined requests ahead (all of one feed's requests come out in order)
and answers them one after another; a client codec carries one exchange at a
time and is ready for the next request once both the request and the response
have ended. ``keep_alive`` says whether the connection may carry another
exchange; once it is False the driver closes after the current one.

A protocol switch — a 101 answering an Upgrade request, a 2xx answering CONNECT
— turns the codec into a pipe: ``passthrough`` becomes True,
``take_trailing_data()`` returns the bytes that arrived behind the switching
head, every later ``feed`` returns ``Passthrough(data)``, and
``send(Passthrough(data))`` returns ``data``.
"""

from __future__ import annotations

from meshlet.errors import LocalProtocolError, RemoteProtocolError
from meshlet.http1.adapter import Adapter, RequestParser, ResponseParser
from meshlet.http1.events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    Event,
    InformationalResponse,
    Passthrough,
    Request,
    Response,
)
from meshlet.http1.framing import Framing
from meshlet.http1.httptools_adapter import ADAPTER as HTTPTOOLS
from meshlet.http1.limits import DEFAULT_LIMITS, Limits
from meshlet.http1.writer import BodyWriter, informational_head, request_head, response_head

__all__ = ["ClientCodec", "ServerCodec"]

# Answering a request we could not parse: assume the plainest request there is.
_UNPARSED = Framing(kind=0, keep_alive=False, method=b"GET", version=b"1.1")


class ServerCodec:
    """The server side of one connection: parses requests, serializes responses.

    After ``feed`` raises RemoteProtocolError the driver may still send one
    response (its ``status_hint``, say) and must then close: ``keep_alive`` is False.
    After a refused Upgrade (a final response instead of 101) the driver calls
    ``resume()`` to get the events of bytes that arrived behind that request.
    """

    __slots__ = (
        "_answered",
        "_body",
        "_done",
        "_errored",
        "_keep_alive",
        "_parser",
        "_switched",
    )

    def __init__(self, *, limits: Limits = DEFAULT_LIMITS, adapter: Adapter = HTTPTOOLS) -> None:
        self._parser: RequestParser = adapter.request_parser(limits)
        self._body: BodyWriter | None = None
        self._keep_alive = True
        self._errored = False
        self._switched = False
        self._answered = 0
        # The last response the connection can carry has been sent.
        self._done = False

    @property
    def keep_alive(self) -> bool:
        """May this connection carry another exchange after the current one?"""
        framings = self._parser.framings
        return self._keep_alive and (not framings or framings[-1].keep_alive)

    @property
    def passthrough(self) -> bool:
        """True once a 101 or a CONNECT 2xx was sent: the bytes are no longer HTTP."""
        return self._switched

    def take_trailing_data(self) -> bytes:
        """Bytes that arrived behind the request that switched protocols."""
        return self._parser.take_held() if self._switched else b""

    def feed(self, data: bytes) -> list[Event]:
        """Events parsed from ``data``; ``b""`` means the peer closed (EOF)."""
        if self._switched:
            return [Passthrough(data)] if data else [ConnectionClosed()]
        framings = self._parser.framings
        seen = len(framings)
        try:
            if not data:
                self._keep_alive = False
                return self._parser.feed_eof()
            return self._parser.feed(data)
        except RemoteProtocolError:
            # The events of this feed are lost with the exception: forget the
            # requests in it too, so the error response answers no unseen request.
            while len(framings) > seen:
                framings.pop()
            self._keep_alive = False
            self._errored = True
            raise

    def resume(self) -> list[Event]:
        """Events of the bytes held behind an Upgrade request that was refused."""
        if self._switched:
            return []
        return self._parser.resume()

    def send(self, event: Event) -> bytes:
        """Bytes for ``event``, or LocalProtocolError if it may not be sent now."""
        # Most frequent first: body pieces, then ends, then heads.
        if isinstance(event, Data):
            if self._body is None:
                raise LocalProtocolError("Data before a response head")
            return self._body.data(event.data)
        if isinstance(event, EndOfMessage):
            return self._end(event)
        if isinstance(event, Response):
            return self._response(event)
        if isinstance(event, InformationalResponse):
            return self._informational(event)
        if isinstance(event, Passthrough):
            if not self._switched:
                raise LocalProtocolError("Passthrough before a protocol switch")
            return event.data
        if isinstance(event, ConnectionClosed):
            self._keep_alive = False
            return b""
        raise LocalProtocolError(f"a server does not send {type(event).__name__}")

    def _current(self) -> Framing:
        framings = self._parser.framings
        if framings:
            return framings[0]
        if self._errored:
            return _UNPARSED
        raise LocalProtocolError("no request to answer")

    def _informational(self, event: InformationalResponse) -> bytes:
        if self._body is not None or self._switched or self._done:
            raise LocalProtocolError("1xx after the final response head")
        framing = self._current()
        head = informational_head(event)
        if event.status == 101:
            if not framing.switch or framing.method == b"CONNECT":
                raise LocalProtocolError("101 answers only a request with Upgrade")
            if self._parser.completed <= self._answered:
                raise LocalProtocolError("101 before the request ended")
            self._parser.framings.popleft()
            self._answered += 1
            self._switched = True
        return head

    def _response(self, event: Response) -> bytes:
        if self._done:
            raise LocalProtocolError("the connection is closing")
        if self._body is not None or self._switched:
            raise LocalProtocolError("a response head was already sent")
        framing = self._current()
        head, body, keep_alive = response_head(
            event,
            method=framing.method,
            version=framing.version,
            keep_alive=self._keep_alive and framing.keep_alive,
        )
        self._keep_alive = keep_alive
        self._body = body
        if framing.switch and framing.method == b"CONNECT" and event.status < 300:
            self._switched = True
        return head

    def _end(self, event: EndOfMessage) -> bytes:
        body = self._body
        if body is None:
            raise LocalProtocolError("EndOfMessage before a response head")
        out = body.end(event.trailers)
        self._body = None
        framings = self._parser.framings
        if framings:
            framings.popleft()
        self._answered += 1
        if self._parser.completed < self._answered:
            # Answered before the request body ended: what is left of it would be
            # read as the next request, so this connection cannot be reused.
            self._keep_alive = False
        self._done = not self._keep_alive
        return out


class ClientCodec:
    """The client side of one connection: serializes requests, parses responses.

    One exchange at a time (no client-side pipelining, like h11): ``send`` of a
    Request before the previous response ended raises LocalProtocolError.
    """

    __slots__ = (
        "_awaiting",
        "_body",
        "_keep_alive",
        "_parser",
        "_responses",
        "_switched",
    )

    def __init__(self, *, limits: Limits = DEFAULT_LIMITS, adapter: Adapter = HTTPTOOLS) -> None:
        self._parser: ResponseParser = adapter.response_parser(limits)
        self._body: BodyWriter | None = None
        self._keep_alive = True
        self._awaiting = False
        self._switched = False
        self._responses = 0

    @property
    def keep_alive(self) -> bool:
        """May this connection carry another exchange after the current one?"""
        return self._keep_alive and not self._parser.unsolicited

    @property
    def passthrough(self) -> bool:
        """True once a 101 or a CONNECT 2xx arrived: the bytes are no longer HTTP."""
        return self._switched

    @property
    def idle(self) -> bool:
        """True when no exchange is in progress (a pool may hand the connection out)."""
        return self._body is None and not self._awaiting and not self._switched

    def take_trailing_data(self) -> bytes:
        """Bytes that arrived behind the switching response head."""
        return self._parser.take_held() if self._switched else b""

    def expect_response_to(self, method: bytes, *, upgrade: bool = False) -> None:
        """Prepare for a response to a request whose head was written some other
        way; ``send(Request)`` does this itself. HEAD and CONNECT change how the
        response is framed (RFC 9112 §6.3); ``upgrade`` lets a 101 through."""
        if self._awaiting or self._switched:
            raise LocalProtocolError("a response is already expected")
        self._parser.expect(method, upgrade=upgrade or method == b"CONNECT")
        self._awaiting = True

    def feed(self, data: bytes) -> list[Event]:
        """Events parsed from ``data``; ``b""`` means the peer closed (EOF)."""
        if self._switched:
            return [Passthrough(data)] if data else [ConnectionClosed()]
        parser = self._parser
        try:
            if data:
                events = parser.feed(data)
            else:
                self._keep_alive = False
                events = parser.feed_eof()
        except RemoteProtocolError:
            self._keep_alive = False
            raise
        if parser.completed != self._responses:
            self._responses = parser.completed
            self._awaiting = False
            framing = parser.framings.popleft()
            if not framing.keep_alive or self._body is not None:
                # The server ended its response before our request ended (an
                # early 413, say): the rest of our body has nowhere to go.
                self._keep_alive = False
            if framing.switch:
                self._switched = True
        elif parser.paused:
            self._switched = True  # 101 Switching Protocols
            self._awaiting = False
        return events

    def send(self, event: Event) -> bytes:
        """Bytes for ``event``, or LocalProtocolError if it may not be sent now."""
        if isinstance(event, Data):
            if self._body is None:
                raise LocalProtocolError("Data before a request head")
            return self._body.data(event.data)
        if isinstance(event, EndOfMessage):
            body = self._body
            if body is None:
                raise LocalProtocolError("EndOfMessage before a request head")
            out = body.end(event.trailers)
            self._body = None
            return out
        if isinstance(event, Request):
            return self._request(event)
        if isinstance(event, Passthrough):
            if not self._switched:
                raise LocalProtocolError("Passthrough before a protocol switch")
            return event.data
        if isinstance(event, ConnectionClosed):
            self._keep_alive = False
            return b""
        raise LocalProtocolError(f"a client does not send {type(event).__name__}")

    def _request(self, event: Request) -> bytes:
        if self._body is not None or self._awaiting or self._switched:
            raise LocalProtocolError("one request at a time: the previous exchange is open")
        if not self.keep_alive:
            raise LocalProtocolError("the connection is closing")
        head, body, keep_alive, upgrade = request_head(event)
        self._parser.expect(event.method, upgrade=upgrade)
        self._awaiting = True
        self._body = body
        if not keep_alive:
            self._keep_alive = False
        return head
