"""Hostile and failing peers: framing attacks, oversized heads, slow clients,
and upstreams that refuse, reset or hang."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from tests.support.pki import Pki
from tests.support.sidecars import (
    LOCAL,
    SERVER_ID,
    Pair,
    bound,
    port_of,
    replace_timeouts,
    start_pair,
    stop_pair,
)
from tests.support.waiting import wait_until

from meshlet.config.bootstrap import Address, EndpointConfig, ServiceConfig

pytestmark = pytest.mark.integration
T = 10.0


async def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the proxy closes the connection."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(LOCAL, port), T)
    writer.write(data)
    out = await asyncio.wait_for(reader.read(), T)  # EOF proves the close
    writer.close()
    return out


SMUGGLING = [
    pytest.param(b"POST /count HTTP/1.1\r\nhost: inference\r\ncontent-length: 3\r\n"
                 b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400, id="cl-and-te"),
    pytest.param(b"POST /count HTTP/1.1\r\nhost: inference\r\ncontent-length: 3\r\n"
                 b"content-length: 4\r\n\r\nabcd", 400, id="duplicate-cl"),
    pytest.param(b"POST /count HTTP/1.1\r\nhost: inference\r\ncontent-length: 3, 3\r\n\r\nabc",
                 400, id="cl-list"),
    pytest.param(b"POST /count HTTP/1.1\r\nhost: inference\r\ncontent-length: -1\r\n\r\n",
                 400, id="negative-cl"),
    pytest.param(b"POST /count HTTP/1.1\r\nhost: inference\r\ntransfer-encoding: chunked\r\n\r\n"
                 b"zz\r\nabc\r\n0\r\n\r\n", 400, id="bad-chunk-size"),
    pytest.param(b"GET /hello HTTP/1.1\r\nhost: inference\r\nx-a: 1\r\n folded\r\n\r\n",
                 400, id="obs-fold"),
    pytest.param(b"GET /hello HTTP/1.1\r\nhost: inference\r\nhost: other\r\n\r\n",
                 400, id="two-hosts"),
    pytest.param(b"POST /count HTTP/1.1\r\nhost: inference\r\ntransfer-encoding: gzip, chunked"
                 b"\r\n\r\n0\r\n\r\n", 501, id="unknown-coding"),
    pytest.param(b"GET /hello HTTP/1.1\nhost: inference\n\n", 400, id="bare-lf"),
]  # fmt: skip


@pytest.mark.parametrize(("request_bytes", "status"), SMUGGLING)
async def test_invalid_framing_is_refused_and_closed(
    pair: Pair, request_bytes: bytes, status: int
) -> None:
    out = await _exchange(pair.outbound_port, request_bytes)
    assert out.startswith(b"HTTP/1.1 %d" % status), out
    assert b"connection: close" in out
    assert b"x-meshlet-error:" in out
    assert pair.app.requests == 0


async def test_smuggling_after_a_valid_request_is_refused(pair: Pair) -> None:
    out = await _exchange(
        pair.outbound_port,
        b"GET /hello HTTP/1.1\r\nhost: inference\r\n\r\n"
        b"POST /count HTTP/1.1\r\nhost: inference\r\ncontent-length: 1\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 200")
    assert b"\r\n\r\nhello" in out
    assert b"HTTP/1.1 400" in out
    assert pair.app.requests == 1


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(b"".join(b"x-h%d: v\r\n" % i for i in range(101)), id="101-headers"),
        pytest.param(b"x-big: " + b"a" * (61 * 1024) + b"\r\n", id="61KiB-header"),
    ],
)
async def test_oversized_head_is_431(pair: Pair, extra: bytes) -> None:
    out = await _exchange(
        pair.outbound_port, b"GET /hello HTTP/1.1\r\nhost: inference\r\n" + extra + b"\r\n"
    )
    assert out.startswith(b"HTTP/1.1 431")
    assert pair.app.requests == 0


async def test_head_at_the_limit_passes_both_hops(pair: Pair) -> None:
    # 95 + host + connection = 97 here; the outbound hop adds x-request-id and
    # x-forwarded-for/-proto, so the inbound sees exactly the 100 allowed.
    extra = b"".join(b"x-h%d: v\r\n" % i for i in range(95))
    out = await _exchange(
        pair.outbound_port,
        b"GET /hello HTTP/1.1\r\nhost: inference\r\n" + extra + b"connection: close\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 200")


async def test_slowloris_head_times_out_with_408(pki: Pki) -> None:
    pair = await start_pair(pki, timeouts=replace_timeouts(header_read_s=0.4))
    try:
        reader, writer = await asyncio.open_connection(LOCAL, pair.outbound_port)
        writer.write(b"GET /hello HTTP/1.1\r\nhost: infer")
        loop = asyncio.get_running_loop()
        start = loop.time()
        out = await asyncio.wait_for(reader.read(), T)
        assert out.startswith(b"HTTP/1.1 408")
        assert loop.time() - start < 5.0  # the 0.4 s head timeout, not the 30 s idle one
        writer.close()
    finally:
        await stop_pair(pair)


async def test_idle_keepalive_connection_is_closed(pki: Pki) -> None:
    pair = await start_pair(pki, timeouts=replace_timeouts(idle_s=0.4))
    try:
        reader, writer = await asyncio.open_connection(LOCAL, pair.outbound_port)
        writer.write(b"GET /hello HTTP/1.1\r\nhost: inference\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"hello"), T)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.read(), T) == b""  # closed by the proxy
        writer.close()
    finally:
        await stop_pair(pair)


async def test_upstream_refused_is_503_and_counted(pki: Pki) -> None:
    dead = bound()
    dead_port = port_of(dead)
    dead.close()  # nothing listens there now
    svc = ServiceConfig(
        name="dead",
        protocol="http",
        endpoints=(
            EndpointConfig(address=Address(host=LOCAL, port=dead_port), identity=SERVER_ID),
        ),
    )
    pair = await start_pair(pki, extra_services=(svc,))
    try:
        async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
            r = await client.get("http://dead/hello")
        assert r.status_code == 503
        assert r.headers["x-meshlet-error"] == "upstream_connect"
        assert pair.out_metrics.upstream_errors() == {"connect": 1}
        assert 'response_flags="UF"' in pair.out_metrics.render().decode()
    finally:
        await stop_pair(pair)


async def test_upstream_reset_is_503(pair: Pair) -> None:
    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
        r = await client.get("http://inference/reset")
        assert r.status_code == 503
        assert r.headers["x-meshlet-error"] == "upstream_reset"
        assert pair.in_metrics.upstream_errors() == {"reset": 1}
        ok = await client.get("http://inference/hello")  # the pair recovers
        assert ok.status_code == 200


async def test_upstream_timeout_is_504(pki: Pki) -> None:
    pair = await start_pair(pki, timeouts=replace_timeouts(upstream_response_s=0.5))
    try:
        async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
            r = await client.get("http://inference/hang")
        assert r.status_code == 504
        assert r.headers["x-meshlet-error"] == "upstream_timeout"
        # both sidecars have the 0.5 s budget here; whichever sweeps first answers
        timeouts = [
            m.upstream_errors().get("timeout", 0) for m in (pair.in_metrics, pair.out_metrics)
        ]
        assert sum(timeouts) >= 1
    finally:
        await stop_pair(pair)


async def test_client_disconnect_mid_stream_releases_upstreams(pair: Pair) -> None:
    reader, writer = await asyncio.open_connection(LOCAL, pair.outbound_port)
    writer.write(b"GET /sse?n=1000&gap=0.05 HTTP/1.1\r\nhost: inference\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"token-0"), T)
    assert pair.app.open == 1
    writer.close()
    await wait_until(lambda: pair.app.open == 0)  # the close travels both hops
    assert not pair.outbound.outbound_listener.upstreams  # type: ignore[union-attr]
    assert 'response_flags="DC"' in pair.out_metrics.render().decode()


async def test_stale_pooled_connection_is_retried_once(pair: Pair) -> None:
    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
        first = await client.get("http://inference/then-reset")
        # the inbound sidecar reuses its pooled app connection, which the app
        # resets without answering: a body-less request is retried on a new one
        second = await client.get("http://inference/hello")
    assert first.status_code == 200
    assert second.status_code == 200
    assert second.text == "hello"
    assert pair.app.connections == 2
    assert pair.in_metrics.upstream_errors() == {}
