"""The gate's small HTTP client against real misbehaving servers on 127.0.0.1:
every bad answer is a ``FetchError`` (so a JWKS fetch fails closed), never a
hang, an unbounded read or a stray exception."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from meshlet.proxy.authz_http import MAX_DOCUMENT_BYTES, FetchError, http_get

pytestmark = pytest.mark.integration
STEP_S = 15.0


@contextlib.asynccontextmanager
async def raw_server(answer: bytes) -> AsyncIterator[int]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def get(answer: bytes) -> str:
    async with raw_server(answer) as port:
        return await asyncio.wait_for(http_get(f"http://127.0.0.1:{port}/k", tls=None), STEP_S)


@pytest.mark.parametrize(
    ("answer", "body"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}", "{}", id="length"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\n{\r\n1\r\n}\r\n0\r\n\r\n",
            "{}",
            id="chunked",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\n\r\n{}", "{}", id="close-delimited"),
    ],
)
async def test_good_framings(answer: bytes, body: str) -> None:
    assert await get(answer) == body


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        pytest.param(b"HTTP/1.1 503 X\r\ncontent-length: 0\r\n\r\n", "answered 503", id="status"),
        pytest.param(b"garbage\r\n\r\n", "bad status line", id="status-line"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % (MAX_DOCUMENT_BYTES + 1),
            "too large",
            id="declared-too-large",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (MAX_DOCUMENT_BYTES + 1),
            "too large",
            id="sent-too-large",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            "bad chunk size",
            id="chunk-size",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}", "truncated", id="truncated"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", "transfer-encoding", id="te"
        ),
    ],
)
async def test_bad_answers_are_fetch_errors(answer: bytes, message: str) -> None:
    with pytest.raises(FetchError, match=message):
        await get(answer)


async def test_https_without_a_trust_store_is_refused_before_connecting() -> None:
    with pytest.raises(FetchError, match="needs a trust store"):
        await http_get("https://127.0.0.1:1/keys", tls=None)
    with pytest.raises(FetchError, match="not an http"):
        await http_get("ftp://127.0.0.1/keys", tls=None)
