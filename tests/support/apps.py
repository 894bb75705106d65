"""Small asyncio upstreams on 127.0.0.1 port 0: an HTTP/1.1 echo, a TCP echo, any
TCP server given its connection handler, and a scripted one-request-per-connection
HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

# A scripted answer: (status, extra headers, body).
Answer = tuple[int, dict[str, str], bytes]
# (method, target, lowercase headers) -> the answer
Handler = Callable[[str, str, dict[str, str]], Answer]
# What asyncio.start_server calls for each connection.
ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class EchoApp:
    """HTTP/1.1 app: answers every request with JSON of its method, path and
    headers; ``/slow?ms=N`` waits N ms first. Counts requests served."""

    server: asyncio.Server | None = None
    served: int = 0
    port: int = 0
    headers_seen: list[dict[str, str]] = field(default_factory=list)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                self.headers_seen.append(headers)
                if target.startswith("/slow"):
                    ms = int(target.split("ms=")[1]) if "ms=" in target else 500
                    await asyncio.sleep(ms / 1000)
                payload = json.dumps(
                    {"method": method, "path": target, "headers": headers, "body_len": len(body)}
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                await writer.drain()
                self.served += 1
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def echo_app() -> AsyncIterator[EchoApp]:
    app = EchoApp()
    await app.start()
    try:
        yield app
    finally:
        await app.close()


@contextlib.asynccontextmanager
async def tcp_echo() -> AsyncIterator[int]:
    """A TCP echo server; yields its port. Echoes until the peer half-closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async with tcp_server(serve) as port:
        yield port


@contextlib.asynccontextmanager
async def tcp_server(serve: ConnectionHandler) -> AsyncIterator[int]:
    """``serve`` on 127.0.0.1 port 0 for the length of the block; yields the port."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def http_server(
    handler: Handler,
) -> tuple[asyncio.Server, int, list[tuple[str, dict[str, str]]]]:
    """A one-request-per-connection HTTP server on 127.0.0.1:0 whose answers
    ``handler(method, target, headers)`` decides; returns the server, its port
    and the list it appends each ``("METHOD target", headers)`` to."""
    seen: list[tuple[str, dict[str, str]]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (h.partition(":") for h in head[1:] if h)
            }
            seen.append((f"{method} {target}", headers))
            status, extra, body = handler(method, target, headers)
            lines = [
                f"HTTP/1.1 {status} X",
                f"content-length: {len(body)}",
                "connection: close",
                *(f"{k}: {v}" for k, v in extra.items()),
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            await writer.drain()
        finally:
            writer.close()

    sock = socket.create_server(("127.0.0.1", 0))
    server = await asyncio.start_server(serve, sock=sock)
    return server, sock.getsockname()[1], seen


def closed_port() -> int:
    """A port on 127.0.0.1 that was just bound and closed: connecting is refused."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])
