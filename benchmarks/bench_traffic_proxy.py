"""Balancer tail latency through real sidecars: P2C-EWMA vs round robin.

    .venv/bin/python benchmarks/bench_traffic_proxy.py [--requests N] [--concurrency C]

A two-replica pool where one replica is 10x slower (10 ms vs 100 ms per
request, one request at a time each, as a model server with batch size 1 would
be), each behind its own inbound sidecar (mTLS), and one outbound sidecar in
front. The same closed-loop load (``--concurrency`` clients) runs once with
the default balancer (P2C over peak-EWMA latency x outstanding) and once with a
DestinationRule ``loadBalancer: {simple: ROUND_ROBIN}``. Printed: P50/P99
latency seen by the client, throughput and the slow replica's share. All
in one process on uvloop over 127.0.0.1; the replicas' delays dominate, so the
figures measure the policy under real sockets, TLS and timing, not the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from meshlet.clock import MonotonicClock
from meshlet.config.bootstrap import (
    Address,
    BootstrapConfig,
    EndpointConfig,
    IdentityFiles,
    InboundConfig,
    Limits,
    MtlsMode,
    OutboundConfig,
    ServiceConfig,
    Timeouts,
)
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.proxy.server import ProxyServer
from meshlet.telemetry.metrics import GoldenMetrics

TD = "cluster.local"
SERVER = f"spiffe://{TD}/ns/ml/sa/inference"
CLIENT = f"spiffe://{TD}/ns/apps/sa/client"
LOCAL = "127.0.0.1"


async def replica(name: bytes, delay_s: float) -> tuple[asyncio.Server, int]:
    """A keep-alive HTTP/1.1 server that serves one request at a time."""
    busy = asyncio.Lock()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                async with busy:
                    await asyncio.sleep(delay_s)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-served-by: %s\r\n\r\nok" % name
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, LOCAL, 0)
    return server, server.sockets[0].getsockname()[1]


def files(ca: CertificateAuthority, tmp: Path, spiffe: str, name: str) -> IdentityFiles:
    svid = ca.issue(SpiffeId.parse(spiffe), now=time.time(), ttl_s=3600)
    svid.write(tmp / name)
    d = tmp / name
    return IdentityFiles(cert=d / "cert.pem", key=d / "key.pem", bundle=d / "bundle.pem")


async def run(lb: str, requests: int, concurrency: int, tmp: Path) -> dict[str, float]:
    ca = CertificateAuthority.init(tmp / f"ca-{lb}", TD, now=time.time())
    clock = MonotonicClock()
    timeouts = Timeouts(connect_s=2.0, header_read_s=10.0, idle_s=60.0, upstream_response_s=60.0)
    servers, inbounds, endpoints = [], [], []
    for name, delay in ((b"fast", 0.010), (b"slow", 0.100)):
        server, port = await replica(name, delay)
        servers.append(server)
        cfg = BootstrapConfig(
            identity=files(ca, tmp, SERVER, f"{lb}-{name.decode()}"),
            admin=None,
            inbound=InboundConfig(
                listen=Address(host=LOCAL, port=0),
                app=Address(host=LOCAL, port=port),
                mtls=MtlsMode.STRICT,
                protocol="http",
            ),
            outbound=None,
            timeouts=timeouts,
            limits=Limits(),
        )
        inbound = ProxyServer(cfg, metrics=GoldenMetrics(), clock=clock)
        await inbound.start()
        inbounds.append(inbound)
        addr = inbound.inbound_address
        assert addr is not None
        endpoints.append(EndpointConfig(address=Address(host=LOCAL, port=addr[1]), identity=SERVER))
    routing: tuple[Path, ...] = ()
    if lb == "round-robin":
        rules = tmp / "rr.yaml"
        rules.write_text(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            "metadata: {name: inference, namespace: ml}\n"
            "spec: {host: inference, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}\n"
        )
        routing = (rules,)
    out_cfg = BootstrapConfig(
        identity=files(ca, tmp, CLIENT, f"{lb}-client"),
        admin=None,
        inbound=None,
        outbound=OutboundConfig(
            listen=Address(host=LOCAL, port=0),
            services=(
                ServiceConfig(name="inference", protocol="http", endpoints=tuple(endpoints)),
            ),
            routing=routing,
        ),
        timeouts=timeouts,
        limits=Limits(),
    )
    outbound = ProxyServer(out_cfg, metrics=GoldenMetrics(), clock=clock)
    await outbound.start()
    out = outbound.outbound_address
    assert out is not None
    latencies: list[float] = []
    served: Counter[bytes] = Counter()
    todo = iter(range(requests))
    request = b"GET / HTTP/1.1\r\nhost: inference\r\n\r\n"

    async def client() -> None:
        reader, writer = await asyncio.open_connection(*out)
        try:
            for _ in todo:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                latencies.append(time.perf_counter() - t0)
                served[head.split(b"x-served-by: ", 1)[1].split(b"\r\n", 1)[0]] += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))), 600)
    elapsed = time.perf_counter() - t0
    await outbound.close()
    for inbound in inbounds:
        await inbound.close()
    for server in servers:
        server.close()
    q = statistics.quantiles(latencies, n=100)
    return {
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "rps": requests / elapsed,
        "slow_share": served[b"slow"] / requests,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=4)
    a = ap.parse_args()
    import uvloop

    print(
        f"# two replicas (10 ms and 100 ms, one request at a time each) behind inbound "
        f"sidecars; {a.requests} requests, {a.concurrency} concurrent clients, via an "
        f"outbound sidecar"
    )
    print(f"{'balancer':<12}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}{'slow share':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for lb in ("P2C-EWMA", "round-robin"):
            r = uvloop.run(run(lb, a.requests, a.concurrency, Path(tmp)))
            print(
                f"{lb:<12}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}{r['rps']:>10.1f}"
                f"{r['slow_share'] * 100:>11.1f}%"
            )


if __name__ == "__main__":
    main()
