"""The events every HTTP/1.1 codec produces and consumes.

This is the contract between the codec (``meshlet.http1``) and the drivers in
``meshlet.proxy``: whichever parser sits behind an adapter, the rest of meshlet
sees only these types. Header names are lowercased ASCII bytes and values are
raw bytes, in arrival order (duplicates kept), because that is what a proxy must
forward faithfully and what RFC 9110 §5.3 lets it compare case-insensitively.
"""

from __future__ import annotations

from dataclasses import dataclass

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class Request:
    """A request head. ``target`` is the raw request-target (origin-form,
    absolute-form, authority-form or ``*``), RFC 9112 §3.2."""

    method: bytes
    target: bytes
    headers: Headers
    http_version: bytes = b"1.1"


@dataclass(slots=True)
class Response:
    """A final response head (status >= 200)."""

    status: int
    headers: Headers
    reason: bytes = b""
    http_version: bytes = b"1.1"


@dataclass(slots=True)
class InformationalResponse:
    """A 1xx response head (100 Continue, 101 Switching Protocols, 103 ...)."""

    status: int
    headers: Headers
    reason: bytes = b""


@dataclass(slots=True)
class Data:
    """A piece of message body, already de-chunked."""

    data: bytes


@dataclass(slots=True)
class EndOfMessage:
    """The body is complete. ``trailers`` come from a chunked body's trailer section."""

    trailers: Headers | None = None


@dataclass(slots=True)
class ConnectionClosed:
    """The peer closed its sending side."""


@dataclass(slots=True)
class Passthrough:
    """Bytes after a protocol switch (101 to an Upgrade, 2xx to CONNECT), untouched.

    Once a codec has switched, HTTP framing no longer applies: every byte fed in
    comes out in one of these and ``send(Passthrough(...))`` writes bytes as is.
    """

    data: bytes


@dataclass(slots=True)
class NeedData:
    """Not an event on the wire: the codec needs more bytes to go on."""


Event = (
    Request
    | Response
    | InformationalResponse
    | Data
    | EndOfMessage
    | ConnectionClosed
    | Passthrough
)


def get_header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of ``name`` (lowercase), or None."""
    for key, value in headers:
        if key == name:
            return value
    return None
