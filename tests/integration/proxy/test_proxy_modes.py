"""ProxyServer wiring of the less common paths: opaque TCP services both ways,
HTTP/1.0 clients, PERMISSIVE peeking and origin-form without Host."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tests.support.apps import tcp_echo
from tests.support.pki import Pki
from tests.support.sidecars import (
    CLIENT_ID,
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

from meshlet.clock import MonotonicClock
from meshlet.config.bootstrap import (
    Address,
    BootstrapConfig,
    EndpointConfig,
    InboundConfig,
    MtlsMode,
    OutboundConfig,
    ServiceConfig,
)
from meshlet.proxy.server import ProxyServer
from meshlet.telemetry.metrics import GoldenMetrics

pytestmark = pytest.mark.integration
T = 10.0


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async with tcp_echo() as port:
        yield port


async def test_opaque_tcp_service_both_ways(pki: Pki, echo_port: int) -> None:
    in_sock, out_sock, tcp_sock = bound(), bound(), bound()
    inbound = ProxyServer(
        BootstrapConfig(
            identity=pki.files(SERVER_ID, "server"),
            admin=None,
            outbound=None,
            inbound=InboundConfig(
                listen=Address(host=LOCAL, port=port_of(in_sock)),
                app=Address(host=LOCAL, port=echo_port),
                mtls=MtlsMode.STRICT,
                protocol="tcp",
            ),
        ),
        metrics=(in_metrics := GoldenMetrics()),
        clock=MonotonicClock(),
    )
    service = ServiceConfig(
        name="grpc",
        protocol="tcp",
        listen=Address(host=LOCAL, port=port_of(tcp_sock)),
        endpoints=(
            EndpointConfig(address=Address(host=LOCAL, port=port_of(in_sock)), identity=SERVER_ID),
        ),
    )
    outbound = ProxyServer(
        BootstrapConfig(
            identity=pki.files(CLIENT_ID, "client"),
            admin=None,
            inbound=None,
            outbound=OutboundConfig(
                listen=Address(host=LOCAL, port=port_of(out_sock)), services=(service,)
            ),
        ),
        metrics=GoldenMetrics(),
        clock=MonotonicClock(),
    )
    await inbound.start({"inbound": in_sock})
    await outbound.start({"outbound": out_sock, "tcp:grpc": tcp_sock})
    try:
        assert outbound.tcp_address("grpc") == (LOCAL, port_of(tcp_sock))
        reader, writer = await asyncio.open_connection(LOCAL, port_of(tcp_sock))
        payload = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(range(256)) * 100
        writer.write(payload)
        echoed = await asyncio.wait_for(reader.readexactly(len(payload)), T)
        assert echoed == payload
        writer.close()
        await wait_until(lambda: bool(in_metrics.tcp_totals().get("closed")))  # both hops
        assert in_metrics.tcp_totals()["opened"] == 1
    finally:
        await outbound.close()
        await inbound.close()


async def test_http10_client_gets_close_delimited_response(pair: Pair) -> None:
    reader, writer = await asyncio.open_connection(LOCAL, pair.outbound_port)
    writer.write(b"GET /sse?n=2&gap=0.01 HTTP/1.0\r\nhost: inference\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), T)  # read until the proxy closes
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"data: token-0\n\ndata: token-1\n\n"


async def test_origin_form_without_host_is_400(pair: Pair) -> None:
    reader, writer = await asyncio.open_connection(LOCAL, pair.outbound_port)
    writer.write(b"GET /hello HTTP/1.1\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), T)
    writer.close()
    assert data.startswith(b"HTTP/1.1 400")
    assert b"x-meshlet-error: no_host" in data


async def test_permissive_silent_client_is_dropped_after_header_timeout(pki: Pki) -> None:
    pair = await start_pair(
        pki, mtls=MtlsMode.PERMISSIVE, timeouts=replace_timeouts(header_read_s=0.3)
    )
    try:
        reader, writer = await asyncio.open_connection(LOCAL, pair.inbound_port)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await asyncio.wait_for(reader.read(), T) == b""
        assert loop.time() - start < 5.0  # the 0.3 s head timeout, not the 30 s idle one
        writer.close()
    finally:
        await stop_pair(pair)


async def test_client_half_close_gets_its_answer_then_close(pair: Pair) -> None:
    reader, writer = await asyncio.open_connection(LOCAL, pair.outbound_port)
    writer.write(b"GET /sse?n=2&gap=0.2 HTTP/1.1\r\nhost: inference\r\n\r\n")
    writer.write_eof()
    data = await asyncio.wait_for(reader.read(), T)  # EOF from the proxy ends this
    writer.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b"0\r\n\r\n")
    assert b"token-1" in data
