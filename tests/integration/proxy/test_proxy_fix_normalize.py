"""Inbound path normalization (Istio's default ``pathNormalization: BASE``): the
policy gate and the app see the same, normalized path.

The client speaks raw TLS straight to the inbound listener so that nothing on
the way (httpx, the outbound sidecar) cleans the path up first."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.pki import Pki
from tests.support.proxy_app import AppStats, start_app
from tests.support.sidecars import CLIENT_ID, FAST, LOCAL, SERVER_ID, bound, port_of

from meshlet.clock import MonotonicClock
from meshlet.config.bootstrap import Address, BootstrapConfig, InboundConfig, MtlsMode
from meshlet.proxy.server import ProxyServer
from meshlet.telemetry.metrics import GoldenMetrics

pytestmark = pytest.mark.integration
T = 10.0

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: models-only, namespace: ml}
spec:
  action: ALLOW
  rules: [{to: [{operation: {paths: ["/v2/models/*", "/headers"]}}]}]
"""


@dataclass
class Inbound:
    server: ProxyServer
    stats: AppStats
    ctx: ssl.SSLContext

    async def get(self, target: bytes) -> tuple[int, bytes]:
        addr = self.server.inbound_address
        assert addr is not None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(addr[0], addr[1], ssl=self.ctx), T
        )
        try:
            writer.write(b"GET " + target + b" HTTP/1.1\r\nhost: inference\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await asyncio.wait_for(reader.readexactly(length), T)
            return int(head.split(b" ", 2)[1]), body
        finally:
            writer.close()


@pytest.fixture
async def inbound(pki: Pki, tmp_path: Path) -> AsyncIterator[Inbound]:
    (tmp_path / "policies.yaml").write_text(POLICY)
    app, stats, app_port = await start_app()
    sock = bound()
    config = BootstrapConfig(
        identity=pki.files(SERVER_ID, "server"),
        admin=None,
        inbound=InboundConfig(
            listen=Address(host=LOCAL, port=port_of(sock)),
            app=Address(host=LOCAL, port=app_port),
            mtls=MtlsMode.STRICT,
            protocol="http",
            policies=(tmp_path / "policies.yaml",),
        ),
        outbound=None,
        timeouts=FAST,
    )
    server = ProxyServer(config, metrics=GoldenMetrics(), clock=MonotonicClock())
    await server.start({"inbound": sock})
    client = pki.files(CLIENT_ID, "client")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(client.bundle))
    ctx.check_hostname = False  # SPIFFE SVIDs carry a URI SAN, no DNS name
    ctx.load_cert_chain(str(client.cert), str(client.key))
    try:
        yield Inbound(server=server, stats=stats, ctx=ctx)
    finally:
        await server.close()
        app.close()
        stats.close_all()


async def test_dot_segments_out_of_an_allowed_prefix_are_denied(inbound: Inbound) -> None:
    status, _ = await inbound.get(b"/v2/models/../admin")
    assert status == 403
    status, _ = await inbound.get(b"/v2/models/%2e%2e/admin")
    assert status == 403
    assert inbound.stats.requests == 0


async def test_app_receives_the_path_the_policy_allowed(inbound: Inbound) -> None:
    # Allowed only as its normalized form "/headers"; before normalization was
    # forwarded, the app got the raw path and answered 404.
    status, body = await inbound.get(b"/v2/models/../../h%65aders?q=/../x")
    assert status == 200, body
    assert json.loads(body)["target"] == "/headers?q=/../x"  # the query is kept as sent


async def test_plain_paths_are_forwarded_untouched(inbound: Inbound) -> None:
    status, body = await inbound.get(b"/headers?a=%2e%2e")
    assert (status, json.loads(body)["target"]) == (200, "/headers?a=%2e%2e")


async def test_nul_escape_is_refused_with_400(inbound: Inbound) -> None:
    status, _ = await inbound.get(b"/v2/models/a%00b")
    assert status == 400
    assert inbound.stats.requests == 0
