"""A small, fast HTTP/1.1 server for the reference workload: asyncio + httptools.

One protocol object per connection parses with httptools and queues complete
requests; one task per connection answers them in order, so pipelined requests
get their responses in the order they were sent (RFC 9112 §9.3.2). Streamed
replies go out chunk by chunk as they are produced, respecting the transport's
write flow control, so SSE tokens reach the client when they are generated.

It is deliberately an ordinary app server (no mesh code): the mesh must carry it
the way it carries any user's model server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections import deque
from http import HTTPStatus
from typing import cast

import httptools

from meshlet.workloads.api import InferenceApp, Reply, Request, StreamReply

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024  # a batch of 64 base64 224x224 images is ~13 MiB
MAX_PIPELINED = 32  # stop reading when this many requests wait for an answer


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class HttpConnection(asyncio.Protocol):
    """One client connection: httptools callbacks fill requests into a queue."""

    def __init__(self, app: InferenceApp) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[tuple[Request, bool, bool]] = deque()
        self.wakeup = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = False
        self.reading_paused = False
        self.worker: asyncio.Task[None] | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0

    # -- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they quack alike.
        self.transport = cast(asyncio.Transport, transport)
        self.worker = asyncio.get_running_loop().create_task(self._answer_loop())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(501, "upgrade is not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"bad request: {exc}")

    def eof_received(self) -> bool | None:
        self.closed = True
        self.wakeup.set()
        return True  # keep the transport open to finish answering queued requests

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.wakeup.set()
        self.writable.set()
        if self.worker is not None:
            self.worker.cancel()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # -- httptools callbacks ------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url, self._headers, self._body, self._body_size = b"", {}, [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        url = httptools.parse_url(self._url)
        request = Request(
            method=self.parser.get_method().decode("ascii"),
            path=url.path.decode("utf-8", "replace"),
            headers=self._headers,
            body=b"".join(self._body),
        )
        http10 = self.parser.get_http_version() == "1.0"
        self.pending.append((request, self.parser.should_keep_alive(), http10))
        self.wakeup.set()
        if len(self.pending) >= MAX_PIPELINED and self.transport and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True

    # -- answering ------------------------------------------------------------------
    def _fail(self, status: int, message: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            body = json.dumps({"error": message}).encode()
            self.transport.write(
                self._head(status, "application/json", len(body), (), False) + body
            )
            self.transport.close()

    @staticmethod
    def _head(
        status: int,
        content_type: str,
        length: int | None,
        headers: tuple[tuple[str, str], ...],
        keep_alive: bool,
    ) -> bytes:
        lines = [f"HTTP/1.1 {status} {_reason(status)}", f"content-type: {content_type}"]
        lines.append(
            f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
        )
        lines.extend(f"{k}: {v}" for k, v in headers)
        if not keep_alive:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _answer_loop(self) -> None:
        try:
            while True:
                while not self.pending:
                    if self.closed:
                        return
                    self.wakeup.clear()
                    await self.wakeup.wait()
                request, keep_alive, http10 = self.pending.popleft()
                if self.reading_paused and len(self.pending) < MAX_PIPELINED // 2:
                    assert self.transport is not None
                    self.transport.resume_reading()
                    self.reading_paused = False
                if not await self._answer(request, keep_alive, http10):
                    break
        except asyncio.CancelledError:
            return
        finally:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

    async def _answer(self, request: Request, keep_alive: bool, http10: bool) -> bool:
        """Write one response; False when the connection must close after it."""
        transport = self.transport
        assert transport is not None, "BUG: answering before connection_made"
        try:
            reply = await self.app.handle(request)
        except Exception:
            log.exception("handler_failed", extra={"path": request.path})
            reply = Reply(status=500, body=b'{"error":"internal error"}')
        head_only = request.method == "HEAD"
        if isinstance(reply, Reply):
            transport.write(
                self._head(
                    reply.status, reply.content_type, len(reply.body), reply.headers, keep_alive
                )
            )
            if not head_only:
                transport.write(reply.body)
            return keep_alive
        await self._stream(reply, keep_alive and not http10, http10, head_only)
        return keep_alive and not http10

    async def _stream(
        self, reply: StreamReply, keep_alive: bool, http10: bool, head_only: bool
    ) -> None:
        """Chunked encoding (RFC 9112 §7.1); an HTTP/1.0 client gets a close-delimited
        body instead, since it cannot read chunks."""
        transport = self.transport
        assert transport is not None
        extra = (*reply.headers, ("cache-control", "no-cache"))
        head = self._head(reply.status, reply.content_type, None, extra, keep_alive)
        if http10:
            head = head.replace(b"transfer-encoding: chunked\r\n", b"")
        transport.write(head)
        if head_only:
            await reply.chunks.aclose()
            return
        try:
            async for chunk in reply.chunks:
                if self.closed and transport.is_closing():
                    return  # the client left: stop generating
                await self.writable.wait()
                transport.write(chunk if http10 else b"%x\r\n%b\r\n" % (len(chunk), chunk))
        finally:
            await reply.chunks.aclose()  # runs the generator's cleanup even when cut short
        if not http10:
            transport.write(b"0\r\n\r\n")


async def start_server(app: InferenceApp, sock: socket.socket) -> asyncio.Server:
    """Serve on an already bound listening socket (bind port 0 to let the OS pick)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HttpConnection(app), sock=sock, backlog=1024)
