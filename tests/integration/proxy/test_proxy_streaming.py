"""HTTP/1.1 through the sidecar pair: streaming both ways, chunked, 100-continue,
pipelining, HEAD, close-delimited bodies and WebSocket upgrades."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from tests.support.sidecars import Pair

pytestmark = pytest.mark.integration
T = 20.0


async def _open(pair: Pair) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", pair.outbound_port), T)


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one content-length response."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await asyncio.wait_for(reader.readexactly(length), T) if length else b""
    return head, body


async def test_sse_events_arrive_as_they_are_produced(pair: Pair) -> None:
    arrivals: list[float] = []
    start = time.monotonic()
    async with (
        httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client,
        client.stream("GET", "http://inference/sse?n=3&gap=1.0") as r,
    ):
        assert r.headers["content-type"] == "text/event-stream"
        async for chunk in r.aiter_raw():
            if chunk:
                arrivals.append(time.monotonic() - start)
    # The app spaces its 3 events 1 s apart: a proxy that buffered the response
    # would deliver everything at once; streaming puts the first event >= 1 s
    # before the last (a 1 s margin for a late first event on a loaded machine).
    assert len(arrivals) >= 2, arrivals
    assert arrivals[-1] - arrivals[0] >= 1.0, arrivals


async def test_chunked_upload_streams_through(pair: Pair) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"y" * 65536

    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
        r = await client.post("http://inference/count", content=body())
    assert r.json() == {"bytes": 64 * 65536}


async def test_large_download_arrives_whole(pair: Pair) -> None:
    n = 24 * 1024 * 1024
    got = 0
    async with (
        httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client,
        client.stream("GET", f"http://inference/big?n={n}") as r,
    ):
        async for chunk in r.aiter_raw():
            got += len(chunk)
    assert got == n


async def test_echo_with_content_length(pair: Pair) -> None:
    payload = bytes(range(256)) * 1000
    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
        r = await client.post("http://inference/echo", content=payload)
    assert r.content == payload


async def test_expect_100_continue(pair: Pair) -> None:
    reader, writer = await _open(pair)
    writer.write(
        b"POST /count HTTP/1.1\r\nhost: inference\r\ncontent-length: 5\r\n"
        b"expect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    assert interim.startswith(b"HTTP/1.1 100")
    writer.write(b"hello")
    head, body = await _read_response(reader)
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b'{"bytes": 5}'
    writer.close()


async def test_pipelined_requests_answered_in_order(pair: Pair) -> None:
    reader, writer = await _open(pair)
    writer.write(
        b"GET /sse?n=2&gap=0.3 HTTP/1.1\r\nhost: inference\r\n\r\n"
        b"GET /status/201 HTTP/1.1\r\nhost: inference\r\n\r\n"
        b"GET /hello HTTP/1.1\r\nhost: inference\r\n\r\n"
    )
    first = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), T)
    assert first.startswith(b"HTTP/1.1 200")
    assert b"token-1" in first
    second, _ = await _read_response(reader)
    assert second.startswith(b"HTTP/1.1 201")
    third, body = await _read_response(reader)
    assert third.startswith(b"HTTP/1.1 200")
    assert body == b"hello"
    writer.close()


async def test_head_response_has_no_body_and_connection_stays_usable(pair: Pair) -> None:
    reader, writer = await _open(pair)
    writer.write(b"HEAD /hello HTTP/1.1\r\nhost: inference\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: 5" in head
    writer.write(b"GET /hello HTTP/1.1\r\nhost: inference\r\n\r\n")
    head2, body = await _read_response(reader)
    assert head2.startswith(b"HTTP/1.1 200")
    assert body == b"hello"
    writer.close()


async def test_close_delimited_upstream_body_is_rechunked(pair: Pair) -> None:
    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
        r = await client.get("http://inference/close-delimited")
    assert r.status_code == 200
    assert r.content == b"until-close-body"


async def test_websocket_upgrade_is_tunnelled(pair: Pair) -> None:
    reader, writer = await _open(pair)
    writer.write(
        b"GET /ws HTTP/1.1\r\nhost: inference\r\nconnection: Upgrade\r\n"
        b"upgrade: websocket\r\nsec-websocket-version: 13\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    assert head.startswith(b"HTTP/1.1 101")
    assert b"upgrade: websocket" in head.lower()
    for message in (b"ping-1", b"\x81\x05hello", b"x" * 100_000):
        writer.write(message)
        echoed = await asyncio.wait_for(reader.readexactly(len(message)), T)
        assert echoed == message
    writer.close()
    assert pair.in_metrics.request_count(response_code=101) == 1


async def test_no_interim_response_for_an_http10_client(pair: Pair) -> None:
    reader, writer = await _open(pair)
    writer.write(
        b"POST /count HTTP/1.0\r\nhost: inference\r\ncontent-length: 5\r\n"
        b"expect: 100-continue\r\n\r\nhello"
    )
    data = await asyncio.wait_for(reader.read(), T)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert b"100 Continue" not in data
    assert data.endswith(b'{"bytes": 5}')
