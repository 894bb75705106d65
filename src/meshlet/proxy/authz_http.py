"""The policy gate's small HTTP/1.1 client: ext-authz checks, and JWKS and OpenID
discovery documents over ``http://`` or verified ``https://``.

One request per connection (``connection: close``), so the answer's framing is
simple: ``content-length``, ``chunked`` or read to EOF, each bounded. It is not
the proxy's upstream pool: these calls are rare (a JWKS every 20 minutes, an
ext-authz call per CUSTOM request) and must not share limits or breakers with
the app's traffic.

TLS verification is never optional: an ``https://`` fetch checks the server's
chain against the system trust store plus the ``JwksResolver`` extra roots, and
its name against the URL host (RFC 6125), exactly as ``ssl.create_default_context``
does. A document that cannot be fetched that way is not fetched at all.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

from meshlet.config.istio_security import ExtAuthzProvider
from meshlet.proxy.hooks import RequestInfo

# A JWKS or discovery document is a few KiB; refuse a server that sends megabytes.
MAX_DOCUMENT_BYTES = 1 << 20
# The longest status line plus headers we read (asyncio's default stream limit).
_HEAD_LIMIT = 64 * 1024


class FetchError(ValueError):
    """A document could not be fetched: bad status, bad framing, too large, or
    not an allowed URL. ValueError so callers catch it with parse errors."""


def trust_context(extra_root_ca: str | None) -> ssl.SSLContext:
    """The client context for https fetches: the system store (what
    ``ssl.create_default_context`` loads, honouring ``SSL_CERT_FILE``), plus the
    extra PEM roots; hostname checking and CERT_REQUIRED stay on. Raises
    ssl.SSLError for PEM that holds no usable certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if extra_root_ca:
        context.load_verify_locations(cadata=extra_root_ca)
    return context


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    encoding = next((v.lower() for k, v in headers if k == "transfer-encoding"), "")
    length = next((v for k, v in headers if k == "content-length"), None)
    if encoding:
        if encoding != "chunked":
            raise FetchError(f"unsupported transfer-encoding {encoding!r}")
        return await _read_chunked(reader)
    if length is not None:
        if not length.isdigit() or int(length) > MAX_DOCUMENT_BYTES:
            raise FetchError(f"bad or too large content-length {length!r}")
        return await reader.readexactly(int(length))
    body = bytearray()
    while chunk := await reader.read(65536):
        body += chunk
        if len(body) > MAX_DOCUMENT_BYTES:
            raise FetchError("document too large")
    return bytes(body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """RFC 9112 section 7.1: hex size lines (extensions ignored), then trailers."""
    body = bytearray()
    while True:
        line = (await reader.readuntil(b"\r\n"))[:-2]
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise FetchError(f"bad chunk size {size_text!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields
                pass
            return bytes(body)
        if len(body) + size > MAX_DOCUMENT_BYTES:
            raise FetchError("document too large")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise FetchError("chunk not followed by CRLF")


async def request(
    host: str,
    port: int,
    head: bytes,
    *,
    want_body: bool,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Send ``head`` (a complete request without body) and read the answer.
    With ``tls`` the connection is TLS to ``host``, whose name is verified."""
    reader, writer = await asyncio.open_connection(
        host, port, ssl=tls, server_hostname=host if tls else None, limit=_HEAD_LIMIT
    )
    try:
        writer.write(head)
        await writer.drain()
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise FetchError(f"bad status line {lines[0]!r}")
        headers = []
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        body = await _read_body(reader, headers) if want_body else b""
        return int(parts[1]), headers, body
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise FetchError(f"truncated or oversized answer: {exc}") from exc
    finally:
        writer.close()


async def ext_authz_call(
    provider: ExtAuthzProvider, info: RequestInfo
) -> tuple[int, list[tuple[str, str]]]:
    """Envoy's HTTP ext-authz shape: the original method and path (after
    ``pathPrefix``), the allowed headers, no body; 200 allows."""
    lines = [
        f"{info.method} {provider.path_prefix}{info.path} HTTP/1.1",
        f"host: {info.host or provider.host}",
        "content-length: 0",
        "connection: close",
    ]
    allowed = set(provider.include_request_headers)
    for name, value in info.headers:
        key = name.decode("latin-1").lower()
        if key in allowed:
            lines.append(f"{key}: {value.decode('latin-1')}")
    if info.source_principal:
        lines.append(f"x-forwarded-client-cert: URI={info.source_principal}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    status, headers, _ = await request(provider.host, provider.port, head, want_body=False)
    return status, headers


async def http_get(uri: str, *, tls: ssl.SSLContext | None) -> str:
    """GET a JSON document from an ``http://`` or ``https://`` URI. An https URI
    needs ``tls`` (FetchError without it: never fall back to plaintext)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"not an http(s) URL: {uri!r}")
    secure = parts.scheme == "https"
    if secure and tls is None:
        raise FetchError(f"{uri}: https needs a trust store")
    port = parts.port or (443 if secure else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    head = (
        f"GET {path} HTTP/1.1\r\nhost: {parts.netloc}\r\naccept: application/json\r\n"
        "connection: close\r\n\r\n"
    ).encode("latin-1")
    status, _, body = await request(
        parts.hostname, port, head, want_body=True, tls=tls if secure else None
    )
    if status != 200:
        raise FetchError(f"{uri} answered {status}")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FetchError(f"{uri}: not UTF-8: {exc}") from exc
