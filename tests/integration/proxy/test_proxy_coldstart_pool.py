"""A cold endpoint pool opens at most ``MAX_CONNECTING_PER_ENDPOINT`` connections
at a time; the other requests wait in line, none is stranded.

Between the outbound sidecar and the inbound one sits a TCP relay that holds
every accepted connection until the test opens its gate, so the TLS handshakes
cannot finish and the number of attempts the pool started is visible at the
relay as accepted connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from tests.support.apps import closed_port
from tests.support.http import http_get
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
    Limits,
    OutboundConfig,
    ServiceConfig,
)
from meshlet.proxy import pool as pool_module
from meshlet.proxy.connect_gate import MAX_CONNECTING_PER_ENDPOINT
from meshlet.proxy.pool import EndpointPool
from meshlet.proxy.server import ProxyServer
from meshlet.telemetry.metrics import GoldenMetrics

K = MAX_CONNECTING_PER_ENDPOINT
HOST = {"host": "inference"}
# Generous: waiters must not time out while the test holds the relay's gate.
SLOW_CONNECT = replace_timeouts(connect_s=60.0, upstream_response_s=60.0)


@dataclass
class Relay:
    """Counts accepted connections and the most at once that had not yet seen the
    server's first bytes (a subset of the time the pool counts them as attempts)."""

    target: int
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    accepted: int = 0
    handshaking: int = 0
    peak_handshaking: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.handshaking += 1
        self.peak_handshaking = max(self.peak_handshaking, self.handshaking)
        counted = True
        try:
            await asyncio.wait_for(self.gate.wait(), 60)
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(LOCAL, self.target), 30)
            first = asyncio.get_running_loop().create_future()

            async def pipe(
                src: asyncio.StreamReader, dst: asyncio.StreamWriter, mark: bool
            ) -> None:
                with contextlib.suppress(OSError):
                    while data := await src.read(65536):
                        if mark and not first.done():
                            first.set_result(None)
                        dst.write(data)
                        await dst.drain()
                with contextlib.suppress(OSError):
                    dst.close()

            up = asyncio.ensure_future(pipe(up_r, writer, True))
            down = asyncio.ensure_future(pipe(reader, up_w, False))
            await asyncio.wait({up, first}, return_when=asyncio.FIRST_COMPLETED)
            self.handshaking -= 1
            counted = False
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            if counted:
                self.handshaking -= 1
            writer.close()


@dataclass
class Rig:
    pair: Pair
    relay: Relay
    outbound: ProxyServer
    port: int

    @property
    def pool(self) -> EndpointPool:
        return self.outbound._clusters[0].endpoints[0]

    def waiting(self) -> int:
        return sum(1 for w in self.pool.gate.line if w.waiting and not w.ex.ended)


async def _outbound(pki: Pki, port: int, timeouts: object) -> tuple[ProxyServer, int]:
    sock = bound()
    service = ServiceConfig(
        name="inference",
        protocol="http",
        endpoints=(EndpointConfig(address=Address(host=LOCAL, port=port), identity=SERVER_ID),),
    )
    cfg = BootstrapConfig(
        identity=pki.files(CLIENT_ID, "client"),
        admin=None,
        inbound=None,
        outbound=OutboundConfig(
            listen=Address(host=LOCAL, port=port_of(sock)), services=(service,)
        ),
        timeouts=timeouts,  # type: ignore[arg-type]
        limits=Limits(),
    )
    server = ProxyServer(cfg, metrics=GoldenMetrics(), clock=MonotonicClock())
    await server.start({"outbound": sock})
    return server, port_of(sock)


@pytest.fixture
async def rig(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    # The relay holds handshakes for as long as a step of the test may take.
    monkeypatch.setattr(pool_module, "HANDSHAKE_TIMEOUT_S", 60.0)
    pair = await start_pair(pki, timeouts=SLOW_CONNECT)
    relay = Relay(target=pair.inbound_port)
    relay_sock = bound()
    relay_server = await asyncio.start_server(relay.serve, sock=relay_sock)
    outbound, port = await _outbound(pki, port_of(relay_sock), SLOW_CONNECT)
    try:
        yield Rig(pair=pair, relay=relay, outbound=outbound, port=port)
    finally:
        relay.gate.set()
        await outbound.close()
        relay_server.close()
        await stop_pair(pair)


def _get(port: int, i: int) -> asyncio.Future[tuple[int, dict[str, str], bytes]]:
    return asyncio.ensure_future(http_get(LOCAL, port, f"/hello?i={i}", headers=HOST, timeout_s=60))


async def test_burst_on_cold_pool_opens_at_most_k_at_a_time(rig: Rig) -> None:
    gets = [_get(rig.port, i) for i in range(32)]
    await wait_until(lambda: rig.waiting() == 32 - K and rig.relay.accepted == K, timeout_s=30)
    # Every request has reached the pool and none can finish: the pool holds K
    # attempts and starts no more until one ends.
    assert rig.pool.gate.connecting == K
    assert rig.relay.accepted == K
    rig.relay.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*gets), 90)
    assert [status for status, _, _ in results] == [200] * 32
    assert rig.relay.peak_handshaking <= K
    assert rig.relay.accepted <= 32
    assert rig.pool.gate.connecting == 0
    assert rig.waiting() == 0


async def test_client_gone_while_waiting_strands_nothing(rig: Rig) -> None:
    gets = [_get(rig.port, i) for i in range(K)]
    await wait_until(lambda: rig.relay.accepted == K, timeout_s=30)
    reader, writer = await asyncio.open_connection(LOCAL, rig.port)
    writer.write(b"GET /hello HTTP/1.1\r\nhost: inference\r\n\r\n")
    await writer.drain()
    await wait_until(lambda: rig.waiting() == 1, timeout_s=30)
    # A reset, not a FIN: after a FIN the sidecar still owes the client an answer.
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await wait_until(lambda: rig.waiting() == 0, timeout_s=30)  # its exchange ended
    del reader
    rig.relay.gate.set()
    statuses = [s for s, _, _ in await asyncio.wait_for(asyncio.gather(*gets), 90)]
    assert statuses == [200] * K
    later = [s for s, _, _ in await asyncio.wait_for(asyncio.gather(*(
        _get(rig.port, i) for i in range(2 * K))), 90)]  # fmt: skip
    assert later == [200] * (2 * K)
    assert rig.pool.gate.connecting == 0


async def test_unreachable_endpoint_fails_every_request_as_before(pki: Pki) -> None:
    timeouts = replace_timeouts(connect_s=10.0)
    outbound, port = await _outbound(pki, closed_port(), timeouts)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(http_get(LOCAL, port, "/hello", headers=HOST, timeout_s=30) for _ in range(16))
            ),
            60,
        )
    finally:
        await outbound.close()
    assert [s for s, _, _ in results] == [503] * 16
    assert {h.get("x-meshlet-error") for _, h, _ in results} == {"upstream_connect"}
