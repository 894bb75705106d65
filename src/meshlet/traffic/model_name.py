"""Which model a request is for: from a KServe v2 path or an OpenAI-style JSON body.

The body case must not buffer the body: prompts and image batches are large,
and the request has to keep streaming upstream. ``ModelFieldScanner`` is fed the
body chunks as they pass and looks for the top-level ``"model"`` string within
the first ``limit_bytes`` (default 64 KiB, the retry buffer's size, since those
bytes are held anyway); past the bound, or when the field is absent or not a
string, it gives up cleanly and routing goes on without a model name. It skips
over strings, nested objects and arrays with regex jumps instead of looking at
every byte in Python.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from urllib.parse import quote

DEFAULT_PEEK_BYTES = 64 * 1024

# /v2/models/{name}[/versions/{version}]/infer (KServe Open Inference Protocol).
_KSERVE = re.compile(
    r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/(?:infer|ready)?$|"
    r"^/v2/models/([^/]+)(?:/versions/([^/]+))?$"
)


def model_from_path(path: str) -> str | None:
    """The model name of a KServe v2 path, or None."""
    if not path.startswith("/v2/models/"):
        return None
    m = _KSERVE.match(path)
    if m is None:
        return None
    return m.group(1) or m.group(3)


# RFC 3986 pchar besides unreserved and pct-encoded: kept as they are in a segment.
_PCHAR = "!$&'()*+,;=:@"


def path_with_model(target: str, model: str, new_model: str) -> str | None:
    """``target`` (a path, query kept) with the model segment of a KServe v2 path
    naming ``model`` replaced by ``new_model``; None when it names another model
    or is no KServe path (the caller leaves it as it is)."""
    prefix = f"/v2/models/{model}"
    if not target.startswith(prefix) or target[len(prefix) : len(prefix) + 1] not in ("", "/", "?"):
        return None
    segment = quote(new_model, safe=_PCHAR)  # a name is config, a path has a grammar
    return f"/v2/models/{segment}{target[len(prefix) :]}"


class ScanState(enum.Enum):
    NEED_MORE = "need_more"
    FOUND = "found"
    ABSENT = "absent"  # the body has no top-level string "model"
    GAVE_UP = "gave_up"  # past the bound, or not JSON


@dataclass(frozen=True, slots=True)
class ScanResult:
    state: ScanState
    model: str | None = None
    # FOUND: the body offsets [start, end) of the value's JSON string token,
    # quotes included, so the proxy can write another model name in its place.
    span: tuple[int, int] | None = None


_STRUCT = re.compile(rb'[{}\[\]",:]')
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_WS = b" \t\r\n"


class ModelFieldScanner:
    """Incremental scanner for the top-level ``"model"`` of a JSON object."""

    __slots__ = ("_buf", "_depth", "_done", "_expect_key", "_key", "_pos", "limit_bytes")

    def __init__(self, limit_bytes: int = DEFAULT_PEEK_BYTES) -> None:
        self.limit_bytes = limit_bytes
        self._buf = bytearray()
        self._pos = 0  # next byte to look at
        self._depth = 0
        self._expect_key = False
        self._key: bytes | None = None  # a depth-1 key read, waiting for its value
        self._done: ScanResult | None = None

    def feed(self, chunk: bytes, *, end: bool = False) -> ScanResult:
        """Feed the next body bytes; ``end`` when the body is complete."""
        if self._done is not None:
            return self._done
        room = self.limit_bytes - len(self._buf)
        self._buf += chunk[: max(0, room)]
        result = self._scan()
        if result.state is ScanState.NEED_MORE and (end or len(chunk) > room):
            result = ScanResult(
                ScanState.ABSENT if end and len(chunk) <= room else ScanState.GAVE_UP
            )
        if result.state is not ScanState.NEED_MORE:
            self._done = result
            self._buf = bytearray()
        return result

    def _scan(self) -> ScanResult:
        buf, n = self._buf, len(self._buf)
        pos = self._pos
        if self._depth == 0 and pos == 0:
            while pos < n and buf[pos] in _WS:
                pos += 1
            if pos == n:
                return ScanResult(ScanState.NEED_MORE)
            if buf[pos] != ord("{"):
                return ScanResult(ScanState.GAVE_UP)
        while True:
            if self._key is not None:  # after a depth-1 key: expect ':' then a value
                while pos < n and buf[pos] in _WS:
                    pos += 1
                if pos < n and buf[pos] == ord(":"):
                    pos += 1
                    while pos < n and buf[pos] in _WS:
                        pos += 1
                if pos >= n:
                    self._pos = pos
                    return ScanResult(ScanState.NEED_MORE)
                if self._key == b'"model"':
                    if buf[pos] != ord('"'):
                        return ScanResult(ScanState.ABSENT)
                    m = _STRING.match(buf, pos)
                    if m is None:
                        self._pos = pos
                        return ScanResult(ScanState.NEED_MORE)
                    try:
                        value: str = json.loads(m.group(0))  # a string token: a str
                    except ValueError:
                        return ScanResult(ScanState.GAVE_UP)
                    return ScanResult(ScanState.FOUND, value, (m.start(), m.end()))
                self._key = None
            m = _STRUCT.search(buf, pos)
            if m is None:
                self._pos = n
                return ScanResult(ScanState.NEED_MORE)
            c, pos = buf[m.start()], m.start()
            if c == ord('"'):
                s = _STRING.match(buf, pos)
                if s is None:
                    self._pos = pos
                    return ScanResult(ScanState.NEED_MORE)
                if self._depth == 1 and self._expect_key:
                    self._key, self._expect_key = s.group(0), False
                pos = s.end()
            elif c in b"{[":
                self._depth += 1
                self._expect_key = self._depth == 1
                pos += 1
            elif c in b"}]":
                self._depth -= 1
                pos += 1
                if self._depth == 0:
                    return ScanResult(ScanState.ABSENT)
            else:
                if c == ord(",") and self._depth == 1:
                    self._expect_key = True
                pos += 1


def rewrite_model(body: bytes, span: tuple[int, int], model: str) -> bytes:
    """``body`` with the string token at ``span`` (from ``ScanResult.span``)
    replaced by ``model`` as a JSON string: the InferenceModel's chosen target
    reaches the model server in the field it reads, every other byte unchanged."""
    start, end = span
    if not (0 <= start < end <= len(body)) or body[start : start + 1] != b'"':
        raise AssertionError(f"BUG: span {span} is not a string token of the body")
    return b"".join((body[:start], json.dumps(model).encode("ascii"), body[end:]))
