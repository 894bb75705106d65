"""A small HTTP/1.1 app for proxy tests, built on asyncio + httptools.

Routes (by path prefix):
  /hello            200 "hello" (content-length)
  /headers          200 JSON {method, target, headers} of the request as received
  /count            reads the whole body, answers {"bytes": n} (bounded memory)
  /echo             answers the whole body back (content-length)
  /sse?n=N&gap=S    N server-sent events, S seconds apart, chunked
  /big?n=N          N bytes of response body, chunked in 64 KiB pieces, honours backpressure
  /status/NNN       an empty response with that status
  /reset            closes the connection without answering
  /hang             never answers
  /close-delimited  body without length, ends by closing
  /ws               upgrade: 101, then echoes raw bytes
  /then-reset       200, then the connection is reset when the next request arrives
                    (a keep-alive connection the app dropped just as it was reused)
Expect: 100-continue is answered with 100 before the body is read.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Coroutine
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httptools


class AppStats:
    def __init__(self) -> None:
        self.connections = 0
        self.requests = 0
        self.open = 0
        self.transports: set[asyncio.Transport] = set()

    def close_all(self) -> None:
        for t in list(self.transports):
            t.abort()


class _AppProtocol(asyncio.Protocol):
    def __init__(self, stats: AppStats) -> None:
        self.stats = stats
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body_bytes = 0
        self.body: list[bytes] = []
        self.tunnel = False
        self.reset_next = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: asyncio.Transport = transport  # type: ignore[assignment]  # uvloop: not a subclass
        self.transport = t
        self.stats.connections += 1
        self.stats.open += 1
        self.stats.transports.add(t)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.open -= 1
        if self.transport is not None:
            self.stats.transports.discard(self.transport)
        self.can_write.set()
        for t in self.tasks:
            t.cancel()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.tunnel:
            self.transport.write(data)
            return
        if self.reset_next:
            self.transport.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.tunnel = True
            rest = data[exc.args[0] :]
            if rest:
                self.transport.write(rest)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body_bytes = 0
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode().lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        assert self.transport is not None
        self.stats.requests += 1
        if ("expect", "100-continue") in self.headers:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        path = urlsplit(self.url.decode()).path
        if path == "/ws" and self.parser.should_upgrade():
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\n"
                b"upgrade: websocket\r\nconnection: upgrade\r\n\r\n"
            )

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.url.startswith(b"/echo"):
            self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        parts = urlsplit(self.url.decode())
        path, query = parts.path, parse_qs(parts.query)
        t = self.transport
        if path == "/ws":
            return
        if path == "/hello":
            self._respond(200, b"hello")
        elif path == "/then-reset":
            self.reset_next = True
            self._respond(200, b"bye")
        elif path == "/headers":
            body = json.dumps(
                {
                    "method": self.parser.get_method().decode(),
                    "target": self.url.decode(),
                    "headers": self.headers,
                }
            ).encode()
            self._respond(200, body, ctype=b"application/json")
        elif path == "/count":
            self._respond(200, json.dumps({"bytes": self.body_bytes}).encode())
        elif path == "/echo":
            self._respond(200, b"".join(self.body))
        elif path.startswith("/status/"):
            self._respond(int(path.rsplit("/", 1)[1]), b"")
        elif path == "/reset":
            t.abort()
        elif path == "/hang":
            pass
        elif path == "/close-delimited":
            t.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil-close-body")
            t.close()
        elif path == "/sse":
            n, gap = int(query.get("n", ["3"])[0]), float(query.get("gap", ["0.2"])[0])
            self._spawn(self._sse(n, gap))
        elif path == "/big":
            self._spawn(self._big(int(query.get("n", ["1048576"])[0])))
        else:
            self._respond(404, b"not found")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _respond(self, status: int, body: bytes, ctype: bytes = b"text/plain") -> None:
        assert self.transport is not None
        head = b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (
            status,
            ctype,
            len(body),
        )
        if self.parser.get_method() == b"HEAD":
            body = b""
        self.transport.write(head + body)
        if not self.parser.should_keep_alive():
            self.transport.close()

    async def _sse(self, n: int, gap: float) -> None:
        assert self.transport is not None
        t = self.transport
        t.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for i in range(n):
            event = b"data: token-%d\n\n" % i
            t.write(b"%x\r\n%s\r\n" % (len(event), event))
            if i + 1 < n:
                await asyncio.sleep(gap)
        t.write(b"0\r\n\r\n")

    async def _big(self, n: int) -> None:
        assert self.transport is not None
        t = self.transport
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % n)
        piece = b"x" * 65536
        left = n
        while left > 0:
            await self.can_write.wait()
            if t.is_closing():
                return
            chunk = piece if left >= len(piece) else piece[:left]
            t.write(chunk)
            left -= len(chunk)


async def start_app(stats: AppStats | None = None) -> tuple[asyncio.Server, AppStats, int]:
    """Start the app on 127.0.0.1, port 0; returns (server, stats, port)."""
    stats = stats or AppStats()
    sock = socket.create_server(("127.0.0.1", 0))
    server = await asyncio.get_running_loop().create_server(lambda: _AppProtocol(stats), sock=sock)
    return server, stats, sock.getsockname()[1]
