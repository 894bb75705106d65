"""DestinationRule ``connectionPool`` connection settings applied per cluster
through real sidecars: ``http.maxRequestsPerConnection``, ``http.idleTimeout``
and ``tcp.connectTimeout``."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from tests.integration.traffic.mesh_support import Replica, dr, mesh_of, vs
from tests.support.pki import Pki
from tests.support.sidecars import CLIENT_ID, LOCAL, SERVER_ID, replace_timeouts
from tests.support.waiting import wait_until

from meshlet.clock import MonotonicClock
from meshlet.config.bootstrap import (
    Address,
    BootstrapConfig,
    EndpointConfig,
    OutboundConfig,
    ServiceConfig,
)
from meshlet.proxy.exchange import Listener
from meshlet.proxy.server import ProxyServer
from meshlet.telemetry.metrics import GoldenMetrics

pytestmark = pytest.mark.integration
T = 10.0
NO_RETRY = "  - route: [{destination: {host: inference}}]\n    retries: {attempts: 0}"


def _upstreams(server: ProxyServer) -> Listener:
    listener = server.outbound_listener
    assert listener is not None
    return listener


async def test_max_requests_per_connection_opens_a_new_connection(
    tpki: Pki, tmp_path: Path
) -> None:
    routing = vs(NO_RETRY) + dr("{connectionPool: {http: {maxRequestsPerConnection: 2}}}")
    rep = Replica("r", {})
    async with mesh_of(tpki, tmp_path, [rep], routing) as mesh, mesh.client() as client:
        listener = _upstreams(mesh.outbound)
        seen: list[object] = []  # the connection objects themselves: ids may be reused
        for _ in range(6):  # sequential, so one connection at a time would do
            r = await asyncio.wait_for(client.get("/", headers={"host": "inference"}), T)
            assert r.status_code == 200
            seen.extend(u for u in listener.upstreams if all(u is not s for s in seen))
        assert len(seen) == 3  # 2 requests each
        assert rep.hits == 6


async def test_without_the_cap_one_connection_serves_all(tpki: Pki, tmp_path: Path) -> None:
    rep = Replica("r", {})
    async with mesh_of(tpki, tmp_path, [rep], vs(NO_RETRY)) as mesh, mesh.client() as client:
        listener = _upstreams(mesh.outbound)
        seen: list[object] = []
        for _ in range(6):
            r = await asyncio.wait_for(client.get("/", headers={"host": "inference"}), T)
            assert r.status_code == 200
            seen.extend(u for u in listener.upstreams if all(u is not s for s in seen))
        assert len(seen) == 1


async def test_idle_timeout_closes_the_pooled_connection(tpki: Pki, tmp_path: Path) -> None:
    # The bootstrap's idle_s is 30 s (FAST); the DestinationRule's 200 ms wins.
    routing = vs(NO_RETRY) + dr("{connectionPool: {http: {idleTimeout: 200ms}}}")
    rep = Replica("r", {})
    async with mesh_of(tpki, tmp_path, [rep], routing) as mesh, mesh.client() as client:
        listener = _upstreams(mesh.outbound)
        r = await asyncio.wait_for(client.get("/", headers={"host": "inference"}), T)
        assert r.status_code == 200
        assert len(listener.upstreams) == 1
        # idle 200 ms, then the next sweep (every 500 ms with FAST timeouts); the
        # bootstrap's 30 s would outlast this bounded wait
        await wait_until(lambda: not listener.upstreams)
        r = await asyncio.wait_for(client.get("/", headers={"host": "inference"}), T)
        assert r.status_code == 200  # a new connection serves the next request


@contextmanager
def _blackhole() -> Iterator[int]:
    """A port whose accept queue is full: further SYNs are dropped, so a connect
    hangs until the client's own timeout (a peer that is not answering)."""
    lsock = socket.socket()
    lsock.bind((LOCAL, 0))
    lsock.listen(0)
    port = int(lsock.getsockname()[1])
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((LOCAL, port))
            fillers.append(s)
        yield port
    finally:
        for s in fillers:
            s.close()
        lsock.close()


async def test_connect_timeout_bounds_a_silent_endpoint(tpki: Pki, tmp_path: Path) -> None:
    routing = vs(NO_RETRY) + dr("{connectionPool: {tcp: {connectTimeout: 300ms}}}")
    (tmp_path / "routes.yaml").write_text(routing)
    with _blackhole() as port:
        out_sock = socket.create_server((LOCAL, 0))
        config = BootstrapConfig(
            identity=tpki.files(CLIENT_ID, "client"),
            admin=None,
            inbound=None,
            outbound=OutboundConfig(
                listen=Address(host=LOCAL, port=out_sock.getsockname()[1]),
                services=(
                    ServiceConfig(
                        name="inference",
                        protocol="http",
                        endpoints=(
                            EndpointConfig(
                                address=Address(host=LOCAL, port=port), identity=SERVER_ID
                            ),
                        ),
                    ),
                ),
                routing=(tmp_path / "routes.yaml",),
            ),
            timeouts=replace_timeouts(connect_s=8.0),  # the DestinationRule's 300 ms must win
        )
        server = ProxyServer(config, metrics=GoldenMetrics(), clock=MonotonicClock())
        await server.start({"outbound": out_sock})
        try:
            url = f"http://{LOCAL}:{out_sock.getsockname()[1]}"
            async with httpx.AsyncClient(base_url=url, timeout=T) as client:
                start = time.monotonic()
                r = await asyncio.wait_for(client.get("/", headers={"host": "inference"}), T)
                took = time.monotonic() - start
        finally:
            await server.close()
    assert r.status_code == 503, r.text
    assert "timed out" in r.text
    assert 0.25 <= took < 4.0, took  # 300 ms, not the bootstrap's 8 s
