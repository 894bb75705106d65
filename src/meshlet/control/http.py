"""A small HTTP/1.1 server for the control plane's JSON API, on meshlet's codec.

The API is a handful of JSON endpoints with small bodies, so this driver reads
each request whole (bounded by ``MAX_BODY_BYTES``), hands it to one async
handler and writes a response with a Content-Length. Keep-alive matters: a
proxy's watch is a long poll re-sent on the same TLS connection, so it pays for
one handshake, not one per poll. The peer's verified client certificate (when
it sent one) is read once per connection and passed along with each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cryptography import x509

from meshlet.errors import IdentityError, RemoteProtocolError
from meshlet.http1.codec import ServerCodec
from meshlet.http1.events import Data, EndOfMessage, Request, Response
from meshlet.identity.x509 import spiffe_id_from_cert

__all__ = ["ApiRequest", "ApiResponse", "Peer", "serve_connection"]

logger = logging.getLogger(__name__)

# CSRs are ~500 bytes and ACKs smaller; 64 KiB leaves room and caps memory.
MAX_BODY_BYTES = 64 * 1024
# A client that does not finish sending a request in this time is dropped
# (the long poll is the server's wait, never the client's).
REQUEST_READ_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    """The client certificate's identity, already verified against the bundle."""

    spiffe_id: str
    not_after: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiRequest:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    peer: Peer | None

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; ValueError when it is not one."""
        data = json.loads(self.body or b"{}")
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiResponse:
    status: int
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = field(default=())

    @classmethod
    def of(cls, status: int, payload: Any) -> ApiResponse:
        return cls(
            status=status,
            body=json.dumps(payload, sort_keys=True).encode(),
            headers=((b"content-type", b"application/json"),),
        )

    @classmethod
    def error(cls, status: int, message: str) -> ApiResponse:
        return cls.of(status, {"error": message})


Handler = Callable[[ApiRequest], Awaitable[ApiResponse]]


def peer_of(writer: asyncio.StreamWriter) -> Peer | None:
    """The verified client certificate's SPIFFE ID, or None without one."""
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    try:
        spiffe_id = spiffe_id_from_cert(cert)
    except IdentityError:
        return None
    return Peer(spiffe_id=str(spiffe_id), not_after=cert.not_valid_after_utc.timestamp())


async def _read_request(
    reader: asyncio.StreamReader, codec: ServerCodec, pending: list[Any]
) -> tuple[Request, bytes] | None:
    head: Request | None = None
    body = bytearray()
    while True:
        while pending:
            event = pending.pop(0)
            if isinstance(event, Request):
                head = event
            elif isinstance(event, Data):
                body += event.data
                if len(body) > MAX_BODY_BYTES:
                    raise RemoteProtocolError("request body too large")
            elif isinstance(event, EndOfMessage) and head is not None:
                return head, bytes(body)
        chunk = await reader.read(65536)
        if not chunk and head is None:
            return None  # the client closed between requests
        pending.extend(codec.feed(chunk))


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    """Answer requests on one connection until either side closes it."""
    codec = ServerCodec()
    peer = peer_of(writer)
    pending: list[Any] = []
    try:
        while True:
            try:
                got = await asyncio.wait_for(
                    _read_request(reader, codec, pending), REQUEST_READ_TIMEOUT_S
                )
            except (RemoteProtocolError, TimeoutError):
                return
            if got is None:
                return
            head, body = got
            target = urlsplit(head.target.decode("latin-1"))
            request = ApiRequest(
                method=head.method.decode("ascii"),
                path=target.path,
                query=dict(parse_qsl(target.query)),
                body=body,
                peer=peer,
            )
            response = await handler(request)
            headers = list(response.headers)
            if response.status not in (204, 304):  # RFC 9110 §8.6: no length on these
                headers.append((b"content-length", str(len(response.body)).encode()))
            out = codec.send(Response(status=response.status, headers=headers))
            if response.body:
                out += codec.send(Data(response.body))
            out += codec.send(EndOfMessage())
            writer.write(out)
            await writer.drain()
            if not codec.keep_alive:
                return
    except (ConnectionError, OSError):
        return
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
