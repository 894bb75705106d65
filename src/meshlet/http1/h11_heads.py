"""Head splitting for the h11 reference adapter: every line goes through the
strict checks (``meshlet.http1.strict``) in the order llhttp would apply them,
so both adapters report the same first error; then h11 parses the head.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import Protocol

import h11

from meshlet.errors import RemoteProtocolError
from meshlet.http1.events import (
    Event,
    Headers,
)
from meshlet.http1.framing import (
    CHUNKED,
    LENGTH,
    UNTIL_CLOSE,
    Framing,
    parse_content_length,
)
from meshlet.http1.limits import Limits
from meshlet.http1.strict import (
    TCHAR,
    ChunkedReader,
    FieldCounter,
    LengthReader,
    UntilCloseReader,
    parse_field_line,
)

_CRLF = b"\r\n"
_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding"})


class BodyReader(Protocol):
    trailers: Headers | None

    def read(self, buf: bytearray, events: list[Event]) -> bool: ...


class H11Errors:
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


class H11Base:
    """Head splitting, pausing and EOF, shared by both directions."""

    def __init__(self, limits: Limits, status_hint: int) -> None:
        self._limits = limits
        self._status_hint = status_hint
        self._errors = H11Errors(status_hint)
        self._buf = bytearray()
        self._reader: BodyReader | None = None
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

    def _body_reader(self, framing: Framing) -> BodyReader | None:
        if framing.kind == LENGTH:
            return LengthReader(framing.length)
        if framing.kind == CHUNKED:
            return ChunkedReader(self._limits, self._status_hint)
        if framing.kind == UNTIL_CLOSE:
            return UntilCloseReader()
        return None
