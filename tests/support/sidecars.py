"""An in-process sidecar pair on 127.0.0.1: client -> outbound ``ProxyServer``
-> mTLS -> inbound ``ProxyServer`` -> the test app (``proxy_app``). Every
listener is bound to port 0 before the server starts and handed to it, so no
test guesses a free port."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from dataclasses import dataclass
from typing import Any

from meshlet.clock import MonotonicClock
from meshlet.config.bootstrap import (
    Address,
    BootstrapConfig,
    EndpointConfig,
    InboundConfig,
    Limits,
    MtlsMode,
    OutboundConfig,
    ServiceConfig,
    Timeouts,
)
from meshlet.proxy.hooks import InboundGate
from meshlet.proxy.server import ProxyServer
from meshlet.telemetry.metrics import GoldenMetrics
from tests.support.pki import TRUST_DOMAIN, Pki
from tests.support.proxy_app import AppStats, start_app

TD = TRUST_DOMAIN
CLIENT_ID = f"spiffe://{TD}/ns/apps/sa/client"
SERVER_ID = f"spiffe://{TD}/ns/ml/sa/inference"
OTHER_ID = f"spiffe://{TD}/ns/ml/sa/other"
LOCAL = "127.0.0.1"


def bound() -> socket.socket:
    """A listening socket on 127.0.0.1 port 0, for a server to be handed."""
    return socket.create_server((LOCAL, 0))


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


FAST = Timeouts(connect_s=2.0, header_read_s=5.0, idle_s=30.0, upstream_response_s=10.0)


@dataclass
class Pair:
    outbound: ProxyServer
    inbound: ProxyServer
    out_metrics: GoldenMetrics
    in_metrics: GoldenMetrics
    app: AppStats
    app_port: int
    pki: Pki

    @property
    def proxy_url(self) -> str:
        addr = self.outbound.outbound_address
        assert addr is not None
        return f"http://{addr[0]}:{addr[1]}"

    @property
    def outbound_port(self) -> int:
        addr = self.outbound.outbound_address
        assert addr is not None
        return addr[1]

    @property
    def inbound_port(self) -> int:
        addr = self.inbound.inbound_address
        assert addr is not None
        return addr[1]


async def start_pair(
    pki: Pki,
    *,
    timeouts: Timeouts = FAST,
    limits: Limits | None = None,
    mtls: MtlsMode = MtlsMode.STRICT,
    endpoint_identity: str = SERVER_ID,
    server_identity: str = SERVER_ID,
    gate: InboundGate | None = None,
    extra_services: tuple[ServiceConfig, ...] = (),
    access_log: Any = None,
) -> Pair:
    app_server, stats, app_port = await start_app()
    in_sock, out_sock = bound(), bound()
    in_cfg = BootstrapConfig(
        identity=pki.files(server_identity, "server"),
        admin=None,
        inbound=InboundConfig(
            listen=Address(host=LOCAL, port=port_of(in_sock)),
            app=Address(host=LOCAL, port=app_port),
            mtls=mtls,
            protocol="http",
        ),
        outbound=None,
        timeouts=timeouts,
        limits=limits or Limits(),
    )
    service = ServiceConfig(
        name="inference",
        protocol="http",
        endpoints=(
            EndpointConfig(
                address=Address(host=LOCAL, port=port_of(in_sock)), identity=endpoint_identity
            ),
        ),
    )
    out_cfg = BootstrapConfig(
        identity=pki.files(CLIENT_ID, "client"),
        admin=None,
        inbound=None,
        outbound=OutboundConfig(
            listen=Address(host=LOCAL, port=port_of(out_sock)),
            services=(service, *extra_services),
        ),
        timeouts=timeouts,
        limits=limits or Limits(),
    )
    in_metrics, out_metrics = GoldenMetrics(), GoldenMetrics()
    clock = MonotonicClock()
    inbound = ProxyServer(
        in_cfg, metrics=in_metrics, clock=clock, inbound_gate=gate, access_log=access_log
    )
    outbound = ProxyServer(out_cfg, metrics=out_metrics, clock=clock, access_log=access_log)
    await inbound.start({"inbound": in_sock})
    await outbound.start({"outbound": out_sock})
    pair = Pair(
        outbound=outbound,
        inbound=inbound,
        out_metrics=out_metrics,
        in_metrics=in_metrics,
        app=stats,
        app_port=app_port,
        pki=pki,
    )
    pair._app_server = app_server  # type: ignore[attr-defined]
    return pair


async def stop_pair(pair: Pair) -> None:
    await pair.outbound.close()
    await pair.inbound.close()
    server = pair._app_server  # type: ignore[attr-defined]
    server.close()
    pair.app.close_all()
    for _ in range(5):  # let every transport run connection_lost before the loop closes
        await asyncio.sleep(0)


def replace_timeouts(**kw: float) -> Timeouts:
    return dataclasses.replace(FAST, **kw)
