"""The sidecar's HTTPS client for the control plane (dynamic mode).

One keep-alive TLS 1.3 connection, one call at a time, speaking JSON over our
own HTTP/1.1 codec. The control plane is authenticated by the trust bundle and
must present ``SpiffeId.control_plane(trust_domain)``; the hostname is not
checked (SPIFFE: the identity is the URI SAN).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshlet.errors import ConfigError, IdentityError, ProtocolError
from meshlet.http1.codec import ClientCodec
from meshlet.http1.events import Data, EndOfMessage, Request, Response
from meshlet.identity.x509 import spiffe_id_from_cert_der

__all__ = ["CALL_TIMEOUT_S", "WATCH_TIMEOUT_S", "ControlClient", "backoff_s", "error_text"]

# Reconnect backoff: first retry soon (a control-plane restart takes a second or
# two), capped low so a returning control plane is found within 2 s (its resync
# grace period is sized to this cap).
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 2.0
# A watch is held by the server for up to its hold time (15 s); wait a little longer.
WATCH_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0


def backoff_s(attempt: int) -> float:
    """Delay before retry number ``attempt`` (0-based): capped doubling, equal jitter."""
    base: float = min(BACKOFF_INITIAL_S * 2.0 ** min(attempt, 30), BACKOFF_MAX_S)
    return base / 2 + secrets.randbelow(1000) / 1000 * base / 2  # "equal jitter"


class ControlClient:
    """One keep-alive HTTPS connection to the control plane, one call at a time."""

    def __init__(
        self, *, url: str, bundle_pem: bytes, control_id: str, cert: tuple[Path, Path] | None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError(f"--control must be an https://host:port URL, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 15012
        self.control_id = control_id
        self._bundle_pem = bundle_pem
        self._cert = cert
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter, ClientCodec] | None = None
        self._lock = asyncio.Lock()
        self._stale = False

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False  # SPIFFE: the identity is the URI SAN, checked below
        ctx.load_verify_locations(cadata=self._bundle_pem.decode())
        if self._cert is not None:
            ctx.load_cert_chain(*self._cert)
        return ctx

    def use(self, *, bundle_pem: bytes, cert: tuple[Path, Path] | None) -> None:
        """New trust or a renewed certificate: the next call reconnects with them
        (a call in flight, such as a held watch, finishes on the old connection)."""
        self._bundle_pem, self._cert = bundle_pem, cert
        self._stale = True

    def reset(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, ClientCodec]:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self._context(), server_hostname=self.host
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        peer = str(spiffe_id_from_cert_der(der)) if der else None
        if peer != self.control_id:
            writer.close()
            raise IdentityError(f"control plane presented {peer}, expected {self.control_id}")
        return reader, writer, ClientCodec()

    async def call(
        self, method: str, target: str, payload: Any = None, *, timeout_s: float = CALL_TIMEOUT_S
    ) -> tuple[int, bytes]:
        """One request; OSError/TimeoutError/ProtocolError when the link is broken."""
        async with self._lock:
            if self._stale:
                self.reset()
                self._stale = False
            try:
                return await asyncio.wait_for(self._call(method, target, payload), timeout_s)
            except BaseException:
                self.reset()  # never reuse a connection in an unknown state
                raise

    async def _call(self, method: str, target: str, payload: Any) -> tuple[int, bytes]:
        if self._conn is None:
            self._conn = await self._connect()
        reader, writer, codec = self._conn
        body = b"" if payload is None else json.dumps(payload).encode()
        headers = [(b"host", self.host.encode()), (b"content-length", str(len(body)).encode())]
        if body:
            headers.append((b"content-type", b"application/json"))
        out = codec.send(Request(method=method.encode(), target=target.encode(), headers=headers))
        if body:
            out += codec.send(Data(body))
        writer.write(out + codec.send(EndOfMessage()))
        await writer.drain()
        status, data = 0, bytearray()
        while True:
            chunk = await reader.read(65536)
            for event in codec.feed(chunk):
                if isinstance(event, Response):
                    status = event.status
                elif isinstance(event, Data):
                    data += event.data
                elif isinstance(event, EndOfMessage):
                    if not codec.keep_alive:
                        self.reset()
                    return status, bytes(data)
            if not chunk:
                raise ProtocolError("control plane closed the connection mid-response")


def error_text(body: bytes) -> str:
    """The ``error`` of a control-plane JSON error body, or its start."""
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")
