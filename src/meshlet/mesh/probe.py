"""A minimal HTTP/1.1 GET over loopback, for readiness checks and metric scrapes.

The runner and ``meshlet status`` only ever talk to local admin servers and apps,
so a dozen lines over asyncio streams beat importing an HTTP client library into
the supervisor.
"""

from __future__ import annotations

import asyncio

from meshlet.errors import UpstreamConnectError, UpstreamTimeout

MAX_BODY_BYTES = 16 * 1024 * 1024  # a Prometheus page of a busy sidecar is far smaller


async def http_get(host: str, port: int, path: str, *, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """``(status, body)`` of ``GET path``; connection problems become UpstreamError."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
                    "User-Agent: meshlet-mesh\r\n\r\n".encode("latin-1")
                )
                data = await reader.read(MAX_BODY_BYTES)
                while chunk := await reader.read(MAX_BODY_BYTES):
                    data += chunk
            finally:
                writer.close()
    except TimeoutError as exc:
        raise UpstreamTimeout(f"GET http://{host}:{port}{path}: no answer in {timeout_s}s") from exc
    except OSError as exc:
        raise UpstreamConnectError(
            f"GET http://{host}:{port}{path}: {exc.strerror or exc}"
        ) from exc
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError) as exc:
        raise UpstreamConnectError(f"GET http://{host}:{port}{path}: not an HTTP answer") from exc
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)
