"""A route timeout bounds the whole request, connection set-up included (as
Istio's route ``timeout`` does): an endpoint whose TLS handshake never finishes
must get the route's 504 on time, not the 10 s handshake or connect timeout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from tests.integration.traffic.mesh_support import vs
from tests.support.pki import Pki
from tests.support.sidecars import CLIENT_ID, LOCAL, SERVER_ID

from meshlet.clock import MonotonicClock
from meshlet.config.bootstrap import (
    Address,
    BootstrapConfig,
    EndpointConfig,
    Limits,
    OutboundConfig,
    ServiceConfig,
    Timeouts,
)
from meshlet.proxy.server import ProxyServer
from meshlet.telemetry.metrics import GoldenMetrics

pytestmark = pytest.mark.integration
SLOW = Timeouts(connect_s=10.0, header_read_s=10.0, idle_s=30.0, upstream_response_s=10.0)


async def test_route_timeout_covers_a_handshake_that_never_ends(tpki: Pki, tmp_path: Path) -> None:
    held: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)  # accepts TCP, never answers the TLS ClientHello

    server = await asyncio.start_server(silent, LOCAL, 0)
    port = server.sockets[0].getsockname()[1]
    routes = tmp_path / "routes.yaml"
    line = "  - route: [{destination: {host: inference}}]\n    retries: {attempts: 0}"
    routes.write_text(vs(line + "\n    timeout: 300ms"))
    service = ServiceConfig(
        name="inference",
        protocol="http",
        endpoints=(EndpointConfig(address=Address(host=LOCAL, port=port), identity=SERVER_ID),),
    )
    cfg = BootstrapConfig(
        identity=tpki.files(CLIENT_ID, "client"),
        admin=None,
        inbound=None,
        outbound=OutboundConfig(
            listen=Address(host=LOCAL, port=0), services=(service,), routing=(routes,)
        ),
        timeouts=SLOW,
        limits=Limits(),
    )
    proxy = ProxyServer(cfg, metrics=GoldenMetrics(), clock=MonotonicClock())
    await proxy.start()
    try:
        addr = proxy.outbound_address
        assert addr is not None
        for _ in range(3):  # bounded
            reader, writer = await asyncio.open_connection(addr[0], addr[1])
            start = time.monotonic()
            writer.write(b"GET / HTTP/1.1\r\nhost: inference\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15.0)
            took = time.monotonic() - start
            writer.close()
            assert head.startswith(b"HTTP/1.1 504"), head
            assert b"x-meshlet-error: upstream_timeout" in head.lower(), head
            assert took < 5.0, took  # the route's 0.3 s, not the 10 s handshake bound
    finally:
        await proxy.close()
        for w in held:
            w.close()
        server.close()
