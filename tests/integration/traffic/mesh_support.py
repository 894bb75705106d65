"""A small real mesh for the traffic tests.

client (httpx) -> outbound ``ProxyServer`` (with ``outbound.routing``) -> mTLS ->
one inbound ``ProxyServer`` per replica -> a tiny asyncio upstream per replica
whose answers change on cue (status, delay, hang, SSE tokens). Everything binds
127.0.0.1 port 0; every wait is bounded. Also the routing YAML builders the
traffic tests share.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tests.support.pki import Pki
from tests.support.sidecars import CLIENT_ID, FAST, LOCAL, SERVER_ID

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
from meshlet.proxy.server import ProxyServer
from meshlet.telemetry.metrics import GoldenMetrics


@dataclass
class Replica:
    """An upstream whose behaviour the test changes between requests."""

    name: str
    labels: dict[str, str]
    status: int = 200
    delay_s: float = 0.0
    fail_next: int = 0  # answer this many requests with ``fail_status`` first
    fail_status: int = 503
    hang: bool = False  # never answer
    sse_tokens: int = 0  # answer with an SSE stream of this many tokens
    sse_interval_s: float = 0.1
    sse_stall_after: int | None = None  # stop sending (keep open) after this many
    hits: int = 0
    requests: list[tuple[bytes, dict[bytes, bytes], bytes]] = field(default_factory=list)
    server: asyncio.base_events.Server | None = None
    port: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends hangs at stop

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *rest = head[:-4].split(b"\r\n")
                headers = {}
                for h in rest:
                    k, _, v = h.partition(b":")
                    headers[k.strip().lower()] = v.strip()
                body = b""
                if b"content-length" in headers:
                    body = await reader.readexactly(int(headers[b"content-length"]))
                elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        chunk = await reader.readexactly(size + 2)
                        body += chunk[:-2]
                        if size == 0:
                            break
                self.hits += 1
                self.requests.append((line, headers, body))
                await self._answer(writer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        if self.hang:
            await self.released.wait()
            raise ConnectionError("stopped while hanging")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = self.status
        if self.fail_next > 0:
            self.fail_next -= 1
            status = self.fail_status
        if self.sse_tokens and status == 200:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\nx-served-by: " + self.name.encode() + b"\r\n\r\n"
            )
            for i in range(self.sse_tokens):
                if self.sse_stall_after is not None and i >= self.sse_stall_after:
                    await self.released.wait()
                    raise ConnectionError("stopped while stalled")
                event = b"data: token%d\n\n" % i
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await asyncio.sleep(self.sse_interval_s)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return
        body = self.name.encode()
        writer.write(
            b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nx-served-by: %s\r\n\r\n%s"
            % (status, len(body), self.name.encode(), body)
        )
        await writer.drain()


@dataclass
class Mesh:
    outbound: ProxyServer
    inbounds: list[ProxyServer]
    replicas: dict[str, Replica]
    metrics: GoldenMetrics

    @property
    def url(self) -> str:
        addr = self.outbound.outbound_address
        assert addr is not None
        return f"http://{addr[0]}:{addr[1]}"

    def client(self, **kw: object) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        return httpx.AsyncClient(base_url=self.url, timeout=10.0, limits=limits, **kw)  # type: ignore[arg-type]


def _bound() -> socket.socket:
    return socket.create_server((LOCAL, 0))


async def start_mesh(
    ca: Pki,
    tmp: Path,
    replicas: list[Replica],
    routing_yaml: str,
    *,
    timeouts: Timeouts = FAST,
    extra_services: dict[str, list[Replica]] | None = None,
) -> Mesh:
    """Replicas of service ``inference`` (and any ``extra_services``), each behind
    its own inbound sidecar, and one outbound sidecar routing with ``routing_yaml``."""
    inbounds: list[ProxyServer] = []
    clock = MonotonicClock()
    groups = {"inference": replicas, **(extra_services or {})}
    services = []
    for svc_name, reps in groups.items():
        endpoints = []
        for rep in reps:
            rep.server = await asyncio.start_server(rep.handle, LOCAL, 0)
            rep.port = rep.server.sockets[0].getsockname()[1]
            sock = _bound()
            cfg = BootstrapConfig(
                identity=ca.files(SERVER_ID, f"in-{rep.name}"),
                admin=None,
                inbound=InboundConfig(
                    listen=Address(host=LOCAL, port=sock.getsockname()[1]),
                    app=Address(host=LOCAL, port=rep.port),
                    mtls=MtlsMode.STRICT,
                    protocol="http",
                ),
                outbound=None,
                timeouts=timeouts,
                limits=Limits(),
            )
            inbound = ProxyServer(cfg, metrics=GoldenMetrics(), clock=clock)
            await inbound.start({"inbound": sock})
            inbounds.append(inbound)
            endpoints.append(
                EndpointConfig(
                    address=Address(host=LOCAL, port=sock.getsockname()[1]),
                    identity=SERVER_ID,
                    labels=tuple(sorted(rep.labels.items())),
                )
            )
        services.append(ServiceConfig(name=svc_name, protocol="http", endpoints=tuple(endpoints)))
    routes = tmp / "routes.yaml"
    routes.write_text(routing_yaml)
    out_sock = _bound()
    metrics = GoldenMetrics()
    out_cfg = BootstrapConfig(
        identity=ca.files(CLIENT_ID, "client"),
        admin=None,
        inbound=None,
        outbound=OutboundConfig(
            listen=Address(host=LOCAL, port=out_sock.getsockname()[1]),
            services=tuple(services),
            routing=(routes,),
        ),
        timeouts=timeouts,
        limits=Limits(),
    )
    outbound = ProxyServer(out_cfg, metrics=metrics, clock=clock)
    await outbound.start({"outbound": out_sock})
    allreps = {r.name: r for reps in groups.values() for r in reps}
    return Mesh(outbound=outbound, inbounds=inbounds, replicas=allreps, metrics=metrics)


async def stop_mesh(mesh: Mesh) -> None:
    await mesh.outbound.close()
    for inbound in mesh.inbounds:
        await inbound.close()
    for rep in mesh.replicas.values():
        rep.released.set()
        await asyncio.sleep(0)
        for w in list(rep.writers):
            w.close()
        if rep.server is not None:
            rep.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rep.server.wait_closed(), 2)


@contextlib.asynccontextmanager
async def mesh_of(
    ca: Pki, tmp: Path, replicas: list[Replica], routing_yaml: str, **kw: object
) -> AsyncIterator[Mesh]:
    mesh = await start_mesh(ca, tmp, replicas, routing_yaml, **kw)  # type: ignore[arg-type]
    try:
        yield mesh
    finally:
        await stop_mesh(mesh)


async def send_many(
    client: httpx.AsyncClient,
    n: int,
    *,
    concurrency: int = 8,
    headers: dict[str, str] | None = None,
    path: str = "/",
) -> Counter[str]:
    """``n`` GETs to ``inference``; counts ``x-served-by`` of 200s, else the status."""
    counts: Counter[str] = Counter()
    todo = iter(range(n))
    sent = {"host": "inference", **(headers or {})}

    async def worker() -> None:
        for _ in todo:
            r = await client.get(path, headers=sent)
            ok = r.status_code == 200
            counts[r.headers.get("x-served-by", "") if ok else str(r.status_code)] += 1

    # Bounded by the amount of work: 2000 requests take about 30 s on a shared 2-core
    # machine and took over 60 s (the former fixed bound) under heavy load.
    limit_s = max(60.0, 0.1 * n)
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), limit_s)
    return counts


SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inference, namespace: ml}
spec:
  host: inference
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def two_versions() -> list[Replica]:
    return [Replica("v1", {"version": "v1"}), Replica("v2", {"version": "v2"})]


def vs(http: str, annotations: str = "") -> str:
    """A VirtualService for host ``inference`` with these ``http`` routes (YAML lines)."""
    meta = "{name: inference, namespace: ml" + (
        f", annotations: {{{annotations}}}}}" if annotations else "}"
    )
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {meta}
spec:
  hosts: [inference]
  http:
{http}
"""


def dr(policy: str) -> str:
    """A DestinationRule document for ``inference`` (preceded by ``---``)."""
    return f"""
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: inference, namespace: ml}}
spec:
  host: inference
  trafficPolicy: {policy}
"""


CANARY = (
    """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inference, namespace: ml}
spec:
  hosts: [inference]
  http:
  - match: [{headers: {x-model-version: {exact: v2}}}]
    route: [{destination: {host: inference, subset: v2}}]
  - match: [{headers: {x-model-name: {exact: llama}}}]
    route: [{destination: {host: inference, subset: v2}}]
  - route:
    - {destination: {host: inference, subset: v1}, weight: 90}
    - {destination: {host: inference, subset: v2}, weight: 10}
---"""
    + SUBSETS
)
