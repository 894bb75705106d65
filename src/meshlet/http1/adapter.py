"""The seam between the codec and a parser library.

A parser adapter turns the bytes of one direction into events. It applies the
shared head rules of ``meshlet.http1.framing`` and stops ("pauses") where the
bytes stop being HTTP for it: after a message that closes the connection, and
at a protocol switch, holding whatever came after for the codec to hand on.
Everything else — what may be sent, keep-alive, passthrough — is the codec's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshlet.http1.events import Event
from meshlet.http1.framing import Framing
from meshlet.http1.limits import Limits


class MessageParser(Protocol):
    """Parses one direction of a connection; raises RemoteProtocolError on bad input."""

    # One entry per Request/Response head emitted, in order; the codec pops them.
    framings: deque[Framing]
    # Messages whose EndOfMessage has been emitted.
    completed: int

    @property
    def paused(self) -> bool:
        """True once the parser stopped at a close or switch point."""
        ...

    @property
    def in_message(self) -> bool:
        """True while a message has started and not ended."""
        ...

    def feed(self, data: bytes) -> list[Event]: ...

    def feed_eof(self) -> list[Event]: ...

    def take_held(self) -> bytes:
        """Bytes received after the pause point; empty afterwards."""
        ...


class RequestParser(MessageParser, Protocol):
    def resume(self) -> list[Event]:
        """Go on parsing the held bytes after a switch that did not happen."""
        ...


class ResponseParser(MessageParser, Protocol):
    # Bytes arrived that answer no request: the connection cannot be reused.
    unsolicited: bool

    def expect(self, method: bytes, *, upgrade: bool) -> None:
        """The next response answers a request with this method (HEAD and
        CONNECT change framing, RFC 9112 §6.3); ``upgrade`` if it asked to switch."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Adapter:
    """A parser library behind the codec: how to make each direction's parser."""

    name: str
    request_parser: Callable[[Limits], RequestParser]
    response_parser: Callable[[Limits], ResponseParser]
