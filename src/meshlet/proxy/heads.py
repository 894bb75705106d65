"""Rewriting HTTP/1.1 message heads as they cross the proxy.

A proxy must not forward hop-by-hop fields (RFC 9110 §7.6.1): Connection and
every field it names, Keep-Alive, Proxy-Connection, TE, Trailer,
Transfer-Encoding and Upgrade (except on an upgrade we pass through). The body
framing is re-made by us: the codec has already de-chunked the body, so we send
either the same Content-Length or our own chunked encoding, which also means a
smuggled framing can never reach the upstream unchanged.

Header names arrive lowercased from the driver; lowercase names are what we
send (RFC 9110 §5.1: field names are case-insensitive), as Envoy does.
"""

from __future__ import annotations

from meshlet.http1.events import Headers

__all__ = ["HOP_BY_HOP", "connection_tokens", "request_head", "response_head"]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)

_STATUS_REASONS = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    201: b"Created",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    304: b"Not Modified",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def connection_tokens(value: bytes | None) -> frozenset[bytes]:
    """The lowercased option names of a Connection header (RFC 9110 §7.6.1)."""
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


def _filtered(headers: Headers, connection: bytes | None) -> list[bytes]:
    """``name: value`` lines without hop-by-hop fields."""
    out: list[bytes] = []
    if connection is None:
        for name, value in headers:
            if name not in HOP_BY_HOP:
                out.append(name + b": " + value)
        return out
    named = connection_tokens(connection)
    for name, value in headers:
        if name not in HOP_BY_HOP and name not in named:
            out.append(name + b": " + value)
    return out


def request_head(
    method: bytes,
    target: bytes,
    headers: Headers,
    *,
    connection: bytes | None,
    extra: list[bytes],
    chunked: bool,
    upgrade: bytes | None,
) -> bytes:
    """The head to send upstream. ``extra`` holds ready ``name: value`` lines the
    caller adds (x-request-id, x-forwarded-*). Upstream connections are always
    keep-alive, so no Connection header is sent except for an upgrade."""
    lines = _filtered(headers, connection)
    lines.extend(extra)
    if chunked:
        lines.append(b"transfer-encoding: chunked")
    if upgrade is not None:
        lines.append(b"connection: upgrade")
        lines.append(b"upgrade: " + upgrade)
    return b"%s %s HTTP/1.1\r\n%s\r\n\r\n" % (method, target, b"\r\n".join(lines))


def response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    connection: bytes | None,
    chunked: bool,
    close: bool,
    upgrade: bytes | None = None,
) -> bytes:
    """The head to send downstream, with our framing and keep-alive decision."""
    lines = _filtered(headers, connection)
    if chunked:
        lines.append(b"transfer-encoding: chunked")
    if upgrade is not None:
        lines.append(b"connection: upgrade")
        lines.append(b"upgrade: " + upgrade)
    elif close:
        lines.append(b"connection: close")
    if not reason:
        reason = _STATUS_REASONS.get(status, b"Status")
    if not lines:
        return b"HTTP/1.1 %d %s\r\n\r\n" % (status, reason)
    return b"HTTP/1.1 %d %s\r\n%s\r\n\r\n" % (status, reason, b"\r\n".join(lines))
