"""Line-level HTTP/1.1 syntax, as strict as llhttp's default (non-lenient) mode.

The h11 adapter runs every line through these checks before h11 sees it, and
frames bodies with the readers below, so that both adapters accept and refuse
the same bytes: h11 on its own unfolds obs-fold, takes bare LF as a line end
and ignores chunk extensions, all of which llhttp (rightly) refuses.
"""

from __future__ import annotations

from meshlet.errors import RemoteProtocolError
from meshlet.http1.events import Data, Event, Headers
from meshlet.http1.limits import Limits

# The methods llhttp knows in HTTP mode; it refuses any other token, so the
# reference adapter does too (an unknown method is almost always an attack or
# a non-HTTP client).
KNOWN_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND "
    b"PROPPATCH SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE "
    b"M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE "
    b"QUERY".split()
)
# Versions llhttp's strict mode parses; framing.py then refuses all but 1.0/1.1.
_PARSED_VERSIONS = frozenset({b"0.9", b"1.0", b"1.1", b"2.0"})
TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TCHAR_SET = frozenset(TCHAR)
_VISIBLE = bytes(range(0x21, 0x7F))
# RFC 9110 §5.5 field-value octets: VCHAR, obs-text, SP and HTAB.
_FIELD_VALUE = _VISIBLE + bytes(range(0x80, 0x100)) + b" \t"
_HEX = b"0123456789abcdefABCDEF"
_ALPHA = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_OWS = b" \t"
_CRLF = b"\r\n"
_MAX_CHUNK_SIZE = 2**64  # llhttp keeps chunk sizes in a uint64


def _bad(message: str, status_hint: int) -> RemoteProtocolError:
    return RemoteProtocolError(message, status_hint=status_hint)


def _version(text: bytes, status_hint: int) -> bytes:
    if len(text) != 8 or not text.startswith(b"HTTP/") or text[5:8] not in _PARSED_VERSIONS:
        raise _bad(f"invalid HTTP version {text!r}", status_hint)
    return text[5:]


def parse_request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    """(method, target, version) from ``METHOD SP+ target SP+ HTTP/x.y``."""
    method, sep, rest = line.partition(b" ")
    if not sep or method not in KNOWN_METHODS:
        raise _bad(f"invalid method {method!r}", 400)
    target, sep, version = rest.lstrip(b" ").partition(b" ")
    if not sep or not target or target.translate(None, _VISIBLE):
        raise _bad(f"invalid request-target {target!r}", 400)
    if method != b"CONNECT" and not target.startswith(b"/") and target != b"*":
        scheme, sep, _ = target.partition(b"://")
        if not sep or not scheme or scheme.translate(None, _ALPHA):
            raise _bad(f"invalid request-target {target!r}", 400)
    return method, target, _version(version.lstrip(b" "), 400)


def parse_status_line(line: bytes) -> tuple[bytes, int, bytes]:
    """(version, status, reason) from ``HTTP/x.y SP 3DIGIT [SP reason]``."""
    version = _version(line[:8], 502)
    code = line[9:12]
    if line[8:9] != b" " or len(code) != 3 or not code.isdigit():
        raise _bad(f"invalid status line {line[:40]!r}", 502)
    rest = line[12:]
    if rest and not rest.startswith(b" "):
        raise _bad(f"invalid status line {line[:40]!r}", 502)
    return version, int(code), rest[1:]


def parse_field_line(line: bytes, status_hint: int) -> tuple[bytes, bytes]:
    """(lowercased name, value without surrounding whitespace) of ``name: value``.

    A line starting with whitespace (obs-fold, RFC 9112 §5.2) fails the name check.
    """
    name, sep, value = line.partition(b":")
    if not sep or not name or name.translate(None, TCHAR):
        raise _bad(f"invalid header name {name[:40]!r}", status_hint)
    value = value.strip(_OWS)
    if value.translate(None, _FIELD_VALUE):
        raise _bad(f"invalid character in header {name!r}", status_hint)
    return name.lower(), value


class FieldCounter:
    """Applies Limits to a header or trailer section as its lines arrive."""

    __slots__ = ("_bytes", "_count", "_limits")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._count = 0
        self._bytes = 0

    def add(self, name: bytes, value: bytes) -> None:
        limits = self._limits
        self._count += 1
        self._bytes += len(name) + len(value)
        if self._count > limits.max_headers:
            raise _bad(f"more than {limits.max_headers} header fields", 431)
        if self._bytes > limits.max_header_bytes:
            raise _bad(f"header section over {limits.max_header_bytes} bytes", 431)


def parse_chunk_line(line: bytes, status_hint: int) -> int:
    """The size of a chunk from ``HEX [; ext]*`` (RFC 9112 §7.1.1), strictly:
    no whitespace anywhere, extension names tokens, values tokens or quoted."""
    size = line.partition(b";")[0]
    if not size or size.translate(None, _HEX):
        raise _bad(f"invalid chunk size {line[:40]!r}", status_hint)
    value = int(size, 16)
    if value >= _MAX_CHUNK_SIZE:
        raise _bad("chunk size overflow", status_hint)
    if len(size) < len(line):
        _check_extensions(line[len(size) :], status_hint)
    return value


def _check_extensions(text: bytes, status_hint: int) -> None:
    index, end = 0, len(text)
    while index < end:
        index += 1  # the ';'
        start = index
        while index < end and text[index] in _TCHAR_SET:
            index += 1
        if index == start == end:
            # llhttp allows an empty name (`;=x`, `;;`) but not a trailing `;`.
            raise _bad("invalid chunk extension name", status_hint)
        if index < end and text[index] == 0x3D:  # '='
            index += 1
            while index < end and text[index] in _TCHAR_SET:
                index += 1
            # llhttp lets a quoted part follow token characters (x"y"); so do we.
            if index < end and text[index] == 0x22:  # '"'
                index = _skip_quoted(text, index + 1, status_hint)
        if index < end and text[index] != 0x3B:  # ';'
            raise _bad("invalid chunk extension", status_hint)


def _skip_quoted(text: bytes, index: int, status_hint: int) -> int:
    # RFC 9110 §5.6.4 quoted-string: qdtext or a backslash-escaped octet.
    while index < len(text):
        char = text[index]
        if char == 0x22:
            return index + 1
        if char == 0x5C:
            index += 1
            if index >= len(text) or not (text[index] in (0x09, 0x20) or text[index] > 0x20):
                break
            if text[index] == 0x7F:
                break
        elif not (char in (0x09, 0x20) or 0x21 <= char <= 0x7E or char >= 0x80):
            break
        index += 1
    raise _bad("invalid quoted chunk extension", status_hint)


class LengthReader:
    """A body of known length."""

    __slots__ = ("remaining", "trailers")

    def __init__(self, length: int) -> None:
        self.remaining = length
        self.trailers: Headers | None = None

    def read(self, buf: bytearray, events: list[Event]) -> bool:
        """Move body bytes from ``buf`` into events; True once the body is complete."""
        if buf:
            take = min(len(buf), self.remaining)
            events.append(Data(bytes(buf[:take])))
            del buf[:take]
            self.remaining -= take
        return not self.remaining


class UntilCloseReader:
    """A response body that ends when the connection does (RFC 9112 §6.3 rule 8)."""

    __slots__ = ("trailers",)

    def __init__(self) -> None:
        self.trailers: Headers | None = None

    def read(self, buf: bytearray, events: list[Event]) -> bool:
        if buf:
            events.append(Data(bytes(buf)))
            del buf[:]
        return False


class ChunkedReader:
    """A chunked body (RFC 9112 §7.1), trailers included."""

    __slots__ = ("_counter", "_limits", "_remaining", "_state", "_status_hint", "trailers")

    def __init__(self, limits: Limits, status_hint: int) -> None:
        self._limits = limits
        self._status_hint = status_hint
        self._state = 0  # 0 size line, 1 data, 2 CRLF after data, 3 trailer section
        self._remaining = 0
        self.trailers: Headers | None = None
        self._counter = FieldCounter(limits)

    def read(self, buf: bytearray, events: list[Event]) -> bool:
        while True:
            state = self._state
            if state == 1:
                if not buf:
                    return False
                take = min(len(buf), self._remaining)
                events.append(Data(bytes(buf[:take])))
                del buf[:take]
                self._remaining -= take
                if self._remaining:
                    return False
                self._state = 2
                continue
            if state == 2:
                if len(buf) < 2:
                    if buf and buf[:1] != b"\r":
                        raise _bad("missing CRLF after chunk data", self._status_hint)
                    return False
                if buf[:2] != _CRLF:
                    raise _bad("missing CRLF after chunk data", self._status_hint)
                del buf[:2]
                self._state = 0
                continue
            line = self._line(buf)
            if line is None:
                return False
            if state == 0:
                size = parse_chunk_line(line, self._status_hint)
                if size:
                    self._remaining = size
                    self._state = 1
                else:
                    self._state = 3
                continue
            if not line:
                return True
            name, value = parse_field_line(line, self._status_hint)
            self._counter.add(name, value)
            if self.trailers is None:
                self.trailers = []
            self.trailers.append((name, value))

    def _line(self, buf: bytearray) -> bytes | None:
        end = buf.find(_CRLF)
        if end < 0:
            if len(buf) > self._limits.max_head_bytes:
                raise _bad("chunk line too long", 431)
            bare = buf.find(b"\n")
            if bare >= 0:
                raise _bad("bare LF in chunked framing", self._status_hint)
            return None
        line = bytes(buf[:end])
        del buf[: end + 2]
        if b"\n" in line or b"\r" in line:
            raise _bad("bare CR or LF in chunked framing", self._status_hint)
        return line
