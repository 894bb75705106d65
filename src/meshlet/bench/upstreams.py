"""Benchmark upstreams, each run in its own process on uvloop + httptools.

``python -m meshlet.bench.upstreams echo|stream [options]`` binds 127.0.0.1
port 0 and prints ``READY <port>`` once it accepts connections, so the caller
never guesses a free port.

- ``echo``: answers every request with the same 1 KiB body (Istio's published
  method uses 1 KiB payloads), keep-alive; fast enough that it is never what a
  topology waits on.
- ``stream``: answers with Server-Sent Events, ``--tokens`` events
  ``--token-interval-ms`` apart, like a token-streaming LLM server; the client
  measures time to first token and the gaps between tokens.
- ``--tls-cert/--tls-key/--tls-ca``: the same server behind TLS that requires a
  client certificate: the bare-TLS floor for handshake timings.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from typing import cast

import httptools  # type: ignore[import-not-found,unused-ignore]

ECHO_BODY = b"x" * 1024
ECHO_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: 1024\r\n\r\n" + ECHO_BODY
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def sse_chunk(data: bytes) -> bytes:
    """One SSE event framed as one HTTP/1.1 chunk (RFC 9112 §7.1)."""
    event = b"data: " + data + b"\n\n"
    return f"{len(event):x}\r\n".encode("ascii") + event + b"\r\n"


class _Server(asyncio.Protocol):
    def __init__(self, kind: str, tokens: int, interval_s: float) -> None:
        self.kind = kind
        self.tokens = tokens
        self.interval_s = interval_s
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.keep_alive = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                self.transport.close()

    def on_message_complete(self) -> None:
        if self.transport is None:
            return
        self.keep_alive = self.parser.should_keep_alive()
        if self.kind == "echo":
            self.transport.write(ECHO_RESPONSE)
            self._maybe_close()
        else:
            self.transport.write(STREAM_HEAD)
            asyncio.get_running_loop().call_later(self.interval_s, self._token, 0)

    def _token(self, i: int) -> None:
        if self.transport is None:
            return
        if i < self.tokens:
            self.transport.write(sse_chunk(b"tok%d" % i))
            asyncio.get_running_loop().call_later(self.interval_s, self._token, i + 1)
        else:
            self.transport.write(sse_chunk(b"[DONE]") + b"0\r\n\r\n")
            self._maybe_close()

    def _maybe_close(self) -> None:
        if not self.keep_alive and self.transport is not None:
            self.transport.close()


def server_tls_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    tls = server_tls_context(args.tls_cert, args.tls_key, args.tls_ca) if args.tls_cert else None
    server = await loop.create_server(
        lambda: _Server(args.kind, args.tokens, args.token_interval_ms / 1000.0),
        host="127.0.0.1",
        port=0,
        ssl=tls,
        backlog=1024,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    await server.serve_forever()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshlet.bench.upstreams")
    parser.add_argument("kind", choices=["echo", "stream"])
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--token-interval-ms", type=float, default=10.0)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-ca")
    args = parser.parse_args(argv)
    import uvloop

    try:
        uvloop.run(serve(args))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
