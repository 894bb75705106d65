"""A small keep-alive HTTP/1.1 client for the demo's frontend, intruder and driver.

It talks to a sidecar's outbound listener the way any app behind ``HTTP_PROXY``
does: absolute-form request targets (``POST http://inference/v2/... HTTP/1.1``,
RFC 9112 §3.2.2) over one reused connection. Responses are parsed with
httptools; a broken connection is reopened on the next request. Dependency-light
on purpose: the reference workloads must not need an HTTP client library.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientReply:
    status: int  # 0 when no response arrived (connection failed or timed out)
    headers: dict[str, str]  # lowercased names; the last value wins
    body: bytes
    latency_ms: float
    error: str = ""


class _ResponseSink:
    """httptools callbacks for one response."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class HttpClient:
    """One keep-alive connection to ``proxy`` (``http://host:port``)."""

    def __init__(self, proxy: str) -> None:
        parts = urlsplit(proxy)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"proxy must be http://host:port, got {proxy!r}")
        self.host, self.port = parts.hostname, parts.port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> ClientReply:
        """Send one request; never raises for network trouble (status 0 instead)."""
        start = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                status, sink, keep = await self._exchange(method, url, headers or {}, body)
        except (OSError, TimeoutError, httptools.HttpParserError, EOFError) as exc:
            await self.close()
            return ClientReply(
                status=0,
                headers={},
                body=b"",
                error=type(exc).__name__,
                latency_ms=(time.perf_counter() - start) * 1000,
            )
        if not keep:
            await self.close()
        return ClientReply(
            status=status,
            headers=sink.headers,
            body=b"".join(sink.body),
            latency_ms=(time.perf_counter() - start) * 1000,
        )

    async def _exchange(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, _ResponseSink, bool]:
        if self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._reader, self._writer
        assert reader is not None, "BUG: connection without a reader"
        host = urlsplit(url).netloc
        lines = [f"{method} {url} HTTP/1.1", f"host: {host}", f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        sink = _ResponseSink()
        parser = httptools.HttpResponseParser(sink)
        while not sink.done:
            data = await reader.read(65536)
            if not data:
                raise EOFError("connection closed before the response ended")
            parser.feed_data(data)
        return parser.get_status_code(), sink, parser.should_keep_alive()

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
