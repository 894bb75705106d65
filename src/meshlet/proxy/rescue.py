"""The one place that turns errors and denials into synthetic HTTP responses.

Every response the sidecar makes up itself (instead of relaying one) is built
here, carries an ``x-meshlet-error`` header naming the reason, a one-line plain
text body, and the Envoy/Istio response flag the metrics and access log record
(https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage
"%RESPONSE_FLAGS%"), so an operator can tell a mesh failure from an app error.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlet.errors import (
    CircuitOpen,
    MeshError,
    NoRoute,
    Overloaded,
    RemoteProtocolError,
    UpstreamConnectError,
    UpstreamReset,
    UpstreamTimeout,
)

__all__ = [
    "Rescue",
    "body_too_large",
    "fault_abort",
    "from_error",
    "no_healthy_upstream",
    "overflow",
    "render",
    "rescue",
    "route_not_found",
    "route_timeout",
    "shed",
]

_REASONS = {
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Rescue:
    """A synthetic response: status, the reason word for ``x-meshlet-error``, the
    Envoy response flag, the one-line body, and whether the connection must close
    afterwards (framing errors: the byte stream can no longer be trusted)."""

    status: int
    error: str
    flag: str
    message: str
    close: bool = False


def rescue(status: int, error: str, flag: str, message: str, *, close: bool = False) -> Rescue:
    return Rescue(status=status, error=error, flag=flag, message=message, close=close)


def from_error(exc: MeshError) -> Rescue:
    """Map each error class to a status and flag (Envoy's choices where it has one:
    no route 502? Envoy answers 404 NR for no route, but the issue asks for 502
    since to the app an unknown mesh service is a gateway failure)."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, RemoteProtocolError):
        return rescue(exc.status_hint, "bad_request", "DPE", msg, close=True)
    if isinstance(exc, NoRoute):
        return rescue(502, "no_route", "NR", msg)
    if isinstance(exc, UpstreamTimeout):
        return rescue(504, "upstream_timeout", "UT", msg)
    if isinstance(exc, UpstreamConnectError):
        return rescue(503, "upstream_connect", "UF", msg)
    if isinstance(exc, UpstreamReset):
        return rescue(503, "upstream_reset", "UC", msg)
    if isinstance(exc, CircuitOpen):
        return rescue(503, "circuit_open", "UO", msg)
    if isinstance(exc, Overloaded):
        return rescue(503, "overloaded", "SI", msg)
    return rescue(500, "internal", "-", msg)


# Traffic management (meshlet.proxy.routing). Flags are Envoy's: NR no route,
# UH no healthy upstream, UO upstream overflow (circuit breaker), UT upstream
# request timeout, FI fault injected. Envoy has no flag for load shedding by
# criticality; "RL" (rate limited) is the closest meaning for a 429.


def route_not_found(message: str) -> Rescue:
    """The host has routes and none matches: Istio answers 404 NR."""
    return rescue(404, "no_route", "NR", message)


def no_healthy_upstream(message: str) -> Rescue:
    return rescue(503, "no_healthy_upstream", "UH", message)


def overflow(reason: str) -> Rescue:
    """A connection-pool limit refused the request (``reason`` names the limit)."""
    return rescue(503, "overflow", "UO", reason)


def route_timeout(message: str) -> Rescue:
    return rescue(504, "route_timeout", "UT", message)


def body_too_large(limit: int, *, close: bool = True) -> Rescue:
    """``close``: the body is still arriving, so its rest must not be read as a request."""
    return rescue(413, "body_too_large", "-", f"request body over {limit} bytes", close=close)


def shed(message: str) -> Rescue:
    return rescue(429, "shed", "RL", message)


def fault_abort(status: int) -> Rescue:
    return rescue(status, "fault_abort", "FI", "fault injected")


def render(
    r: Rescue, *, close: bool = False, request_id: bytes | None = None, head_only: bool = False
) -> bytes:
    """The response bytes. ``head_only`` for HEAD requests (no body, same length)."""
    body = r.message.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + b"\n"
    lines = [
        b"HTTP/1.1 %d %s" % (r.status, _REASONS.get(r.status, b"Error")),
        b"content-type: text/plain; charset=utf-8",
        b"content-length: %d" % len(body),
        b"x-meshlet-error: " + r.error.encode("ascii"),
    ]
    if request_id:
        lines.append(b"x-request-id: " + request_id)
    if close or r.close:
        lines.append(b"connection: close")
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    return head if head_only else head + body
