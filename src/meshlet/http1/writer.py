"""Events to bytes: heads checked against header injection, bodies framed.

What goes out must be unambiguous to every hop after us, so anything that could
split or merge messages downstream raises LocalProtocolError instead of being
written: CR/LF/NUL in a field, a non-token name, Content-Length beside
Transfer-Encoding, more or fewer body bytes than Content-Length promised.
"""

from __future__ import annotations

from http import HTTPStatus

from meshlet.errors import LocalProtocolError
from meshlet.http1.events import Headers, InformationalResponse, Request, Response
from meshlet.http1.framing import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, connection_tokens

# RFC 9110 §5.6.2 tchar: what a field name or method may be made of.
_TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGITS = b"0123456789"
_FRAMING_NAMES = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_CRLF = b"\r\n"
_CR_LF_NUL = b"\r\n\x00"
_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


class BodyWriter:
    """Frames one outgoing body; ``kind`` is a framing constant from framing.py."""

    __slots__ = ("kind", "remaining")

    def __init__(self, kind: int, remaining: int = 0) -> None:
        self.kind = kind
        self.remaining = remaining

    def data(self, data: bytes) -> bytes:
        kind = self.kind
        if kind == CHUNKED:
            # An empty chunk would be the last-chunk marker (RFC 9112 §7.1): skip it.
            return b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        if kind == LENGTH:
            self.remaining -= len(data)
            if self.remaining < 0:
                raise LocalProtocolError("body longer than its Content-Length")
            return data
        if kind == UNTIL_CLOSE:
            return data
        if data:
            raise LocalProtocolError("this message cannot have a body")
        return b""

    def end(self, trailers: Headers | None) -> bytes:
        if self.kind == CHUNKED:
            if not trailers:
                return b"0\r\n\r\n"
            return b"0\r\n" + _fields(trailers) + _CRLF
        if trailers:
            raise LocalProtocolError("trailers need a chunked body")
        if self.kind == LENGTH and self.remaining:
            raise LocalProtocolError(f"body {self.remaining} bytes short of its Content-Length")
        return b""


def _fields(headers: Headers) -> bytes:
    # Checked as two joined blocks (names, values) and built with one join:
    # per-field checks would cost more than the rest of serialization.
    if not headers:
        return b""
    names = [field[0] for field in headers]
    if b"" in names or b"".join(names).translate(None, _TCHAR):
        raise LocalProtocolError(f"invalid header name in {names!r}")
    values = b"".join([field[1] for field in headers])
    # RFC 9110 §5.5: no CR, LF or NUL in a value (header injection).
    if len(values.translate(None, _CR_LF_NUL)) != len(values):
        raise LocalProtocolError("CR, LF or NUL in a header value")
    return b"\r\n".join([b": ".join(field) for field in headers]) + _CRLF


def _framing_fields(headers: Headers) -> tuple[bytes | None, bytes | None, list[bytes]]:
    length: bytes | None = None
    coding: bytes | None = None
    connection = b""
    for name, value in headers:
        if name not in _FRAMING_NAMES:
            continue
        if name == b"content-length":
            if length is not None or not value or value.translate(None, _DIGITS):
                raise LocalProtocolError(f"invalid or repeated Content-Length {value!r}")
            length = value
        elif name == b"transfer-encoding":
            if coding is not None or value.lower() != b"chunked":
                raise LocalProtocolError(f"unsupported Transfer-Encoding {value!r}")
            coding = value
        elif name == b"connection":
            connection = value if not connection else connection + b"," + value
    if length is not None and coding is not None:
        raise LocalProtocolError("Content-Length together with Transfer-Encoding")
    return length, coding, connection_tokens(connection) if connection else []


def request_head(request: Request) -> tuple[bytes, BodyWriter, bool, bool]:
    """(bytes, body writer, keep-alive requested, upgrade requested) for a request.

    With neither Content-Length nor Transfer-Encoding the request has no body
    (RFC 9112 §6.3 rule 7); a caller streaming a body of unknown length says
    ``transfer-encoding: chunked``.
    """
    method, target = request.method, request.target
    if not method or method.translate(None, _TCHAR):
        raise LocalProtocolError(f"invalid method {method!r}")
    if not target or b" " in target or b"\r" in target or b"\n" in target:
        raise LocalProtocolError(f"invalid request-target {target!r}")
    length, coding, tokens = _framing_fields(request.headers)
    if coding is not None:
        body = BodyWriter(CHUNKED)
    elif length is not None and length.strip(b"0"):
        body = BodyWriter(LENGTH, int(length))
    else:
        body = BodyWriter(NO_BODY)
    fields = _fields(request.headers)
    head = b"%b %b HTTP/1.1\r\n%b\r\n" % (method, target, fields)
    upgrade = method == b"CONNECT" or (
        b"upgrade" in tokens and any(name == b"upgrade" for name, _ in request.headers)
    )
    return head, body, b"close" not in tokens, upgrade


def informational_head(response: InformationalResponse) -> bytes:
    """Bytes of a 1xx head (which never has a body)."""
    if not 100 <= response.status <= 199:
        raise LocalProtocolError(f"informational status must be 1xx, got {response.status}")
    return _status_line(response.status, response.reason) + _fields(response.headers) + _CRLF


def response_head(
    response: Response, *, method: bytes, version: bytes, keep_alive: bool
) -> tuple[bytes, BodyWriter, bool]:
    """(bytes, body writer, keep-alive) for a final response to ``method``.

    With neither Content-Length nor Transfer-Encoding the body is chunked for an
    HTTP/1.1 client and delimited by closing for an HTTP/1.0 one (RFC 9112 §6.3);
    when the connection will close, ``connection: close`` is added (RFC 9112 §9.6).
    """
    status = response.status
    if not 200 <= status <= 599:
        raise LocalProtocolError(f"final status must be 200-599, got {status}")
    headers = response.headers
    length, coding, tokens = _framing_fields(headers)
    keep_alive = keep_alive and b"close" not in tokens
    extra: Headers = []
    if method == b"HEAD" or status in (204, 304) or (method == b"CONNECT" and status < 300):
        if status == 204 and (length is not None or coding is not None):
            raise LocalProtocolError("204 No Content with Content-Length or Transfer-Encoding")
        body = BodyWriter(NO_BODY)
    elif coding is not None and version == b"1.1":
        body = BodyWriter(CHUNKED)
    elif length is not None:
        body = BodyWriter(LENGTH if length.strip(b"0") else NO_BODY, int(length))
    elif version == b"1.1" and coding is None:
        body = BodyWriter(CHUNKED)
        extra.append((b"transfer-encoding", b"chunked"))
    else:
        # An HTTP/1.0 client cannot read chunked: drop the coding, end by closing.
        headers = [(n, v) for n, v in headers if n != b"transfer-encoding"]
        body = BodyWriter(UNTIL_CLOSE)
        keep_alive = False
    if version == b"1.0" and keep_alive and b"keep-alive" not in tokens:
        extra.append((b"connection", b"keep-alive"))
    elif not keep_alive and b"close" not in tokens and version == b"1.1":
        extra.append((b"connection", b"close"))
    block = _fields(headers)
    if extra:
        block += _fields(extra)
    return _status_line(status, response.reason) + block + _CRLF, body, keep_alive


def _status_line(status: int, reason: bytes) -> bytes:
    if b"\r" in reason or b"\n" in reason:
        raise LocalProtocolError(f"CR or LF in reason phrase {reason!r}")
    return b"HTTP/1.1 %d %b\r\n" % (status, reason or _REASONS.get(status, b""))
