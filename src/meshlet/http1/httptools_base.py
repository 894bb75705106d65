"""State and callbacks both httptools parsers share, and the one place
httptools' exceptions are translated (``ParseErrors``)."""

from __future__ import annotations

from collections import deque
from types import TracebackType

import httptools

from meshlet.errors import RemoteProtocolError
from meshlet.http1.events import Data, Event, Headers
from meshlet.http1.framing import Framing
from meshlet.http1.limits import Limits

VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
OWS = b" \t"


class Stop(Exception):
    """Raised from a callback to stop llhttp where the bytes stop being ours."""


class ParseErrors:
    """The one place httptools exceptions are translated (STYLE.md §5).

    A RemoteProtocolError raised in one of our callbacks (a limit, a framing
    rule) wins over llhttp's generic "callback error"; errors after a point
    where the parser was told to stop reading are expected and swallowed.
    """

    __slots__ = ("_owner", "_status_hint")

    def __init__(self, owner: ParserBase, status_hint: int) -> None:
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


class ParserBase:
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
        value = value.rstrip(OWS)
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
