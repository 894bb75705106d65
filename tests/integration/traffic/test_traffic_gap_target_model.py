"""The InferenceModel's chosen target model reaches the model server in the body.

Through real sidecars (mTLS): the client asks for model ``chat``; the pool serves
weighted target models; the request the upstream reads names the target in its
``"model"`` field (or its KServe v2 path), with a correct Content-Length (or
chunked framing), and the
same rewritten body goes to a mirror (the buffer a retry would replay). A body
whose model lies past the 64 KiB peek passes through untouched. The weighted
split is checked against the reference workload's chat server
(``meshlet.workloads``), which reports the model it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.integration.traffic.mesh_support import Mesh, Replica, mesh_of, stop_mesh
from tests.support.pki import Pki
from tests.support.sidecars import CLIENT_ID, FAST, LOCAL, SERVER_ID
from tests.support.waiting import wait_until

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
)
from meshlet.proxy.server import ProxyServer
from meshlet.telemetry.metrics import GoldenMetrics
from meshlet.workloads.api import InferenceApp, Settings
from meshlet.workloads.server import start_server

pytestmark = pytest.mark.integration

T = 15.0  # bound of one request on a loaded machine
HOST = {"host": "inference", "content-type": "application/json"}


def pool_routing(targets: str, mirror: bool = False) -> str:
    filters = (
        "    filters:\n    - type: RequestMirror\n"
        "      requestMirror: {backendRef: {name: shadow, port: 80}}\n"
        if mirror
        else ""
    )
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: llm, namespace: ml}}
spec:
  parentRefs: [{{group: "", kind: Service, name: inference}}]
  rules:
  - backendRefs: [{{name: llm-pool, group: inference.networking.k8s.io, kind: InferencePool}}]
{filters}---
apiVersion: inference.networking.k8s.io/v1
kind: InferencePool
metadata: {{name: llm-pool}}
spec:
  selector: {{matchLabels: {{app: vllm}}}}
  targetPorts: [{{number: 8000}}]
  endpointPickerRef: {{name: epp, port: {{number: 9002}}}}
---
apiVersion: inference.networking.x-k8s.io/v1alpha2
kind: InferenceModel
metadata: {{name: chat}}
spec:
  modelName: chat
  criticality: Critical
  poolRef: {{name: llm-pool}}
  targetModels: {targets}
"""


ONE_TARGET = pool_routing("[{name: chat-lora-b, weight: 100}]")


def chat_body(model: str = "chat", pad: int = 0) -> bytes:
    return json.dumps(
        {
            "messages": [{"role": "user", "content": "hello " + "x" * pad}],
            "model": model,
            "max_tokens": 2,
        }
    ).encode()


def as_sent(body: bytes, model: str) -> bytes:
    """``body`` as the upstream must see it: only the model's value differs."""
    return body.replace(b'"model": "chat"', b'"model": "' + model.encode() + b'"')


async def test_upstream_reads_the_target_model_with_a_corrected_length(
    tpki: Pki, tmp_path: Path
) -> None:
    gpu = Replica("gpu", {"app": "vllm"})
    body = chat_body()
    async with mesh_of(tpki, tmp_path, [gpu], ONE_TARGET) as mesh, mesh.client() as client:
        r = await asyncio.wait_for(
            client.post("/v1/chat/completions", headers=HOST, content=body), T
        )
        assert r.status_code == 200
        (_, headers, got), *_ = gpu.requests
        assert got == as_sent(body, "chat-lora-b")
        assert int(headers[b"content-length"]) == len(got) == len(body) + len("-lora-b")
        assert headers[b"x-model-name"] == b"chat"  # what routing matched on
        # A body that names no InferenceModel of the pool is left as it is.
        other = chat_body("embed-small")
        r = await asyncio.wait_for(
            client.post("/v1/chat/completions", headers=HOST, content=other), T
        )
        assert r.status_code == 200
        assert gpu.requests[-1][2] == other


async def test_kserve_path_names_the_target_model(tpki: Pki, tmp_path: Path) -> None:
    gpu = Replica("gpu", {"app": "vllm"})
    async with mesh_of(tpki, tmp_path, [gpu], ONE_TARGET) as mesh, mesh.client() as client:
        for path in ("/v2/models/chat/infer?trace=1", "/v2/models/other/infer"):
            r = await asyncio.wait_for(client.post(path, headers=HOST, content=b"{}"), T)
            assert r.status_code == 200
        lines = [line for line, _, _ in gpu.requests]
        assert lines == [
            b"POST /v2/models/chat-lora-b/infer?trace=1 HTTP/1.1",
            b"POST /v2/models/other/infer HTTP/1.1",  # no InferenceModel: as it was
        ]


async def test_chunked_body_split_inside_the_model_value_is_rewritten(
    tpki: Pki, tmp_path: Path
) -> None:
    gpu = Replica("gpu", {"app": "vllm"})
    body = chat_body()
    cut = body.index(b'"chat"') + 3  # the value straddles two chunks

    async def chunks() -> AsyncIterator[bytes]:
        yield body[:cut]
        await asyncio.sleep(0.05)  # a separate read on the sidecar's side
        yield body[cut:]

    async with mesh_of(tpki, tmp_path, [gpu], ONE_TARGET) as mesh, mesh.client() as client:
        r = await asyncio.wait_for(
            client.post("/v1/chat/completions", headers=HOST, content=chunks()), T
        )
        assert r.status_code == 200
        (_, headers, got), *_ = gpu.requests
        assert headers[b"transfer-encoding"] == b"chunked"
        assert got == as_sent(body, "chat-lora-b")


async def test_mirror_gets_the_rewritten_body_the_retry_buffer_holds(
    tpki: Pki, tmp_path: Path
) -> None:
    gpu, shadow = Replica("gpu", {"app": "vllm"}), Replica("shadow", {})
    body = chat_body()
    routing = pool_routing("[{name: chat-lora-b, weight: 100}]", mirror=True)
    async with (
        mesh_of(tpki, tmp_path, [gpu], routing, extra_services={"shadow": [shadow]}) as mesh,
        mesh.client() as client,
    ):
        r = await asyncio.wait_for(
            client.post("/v1/chat/completions", headers=HOST, content=body), T
        )
        assert r.status_code == 200
        await wait_until(lambda: bool(shadow.requests), T)  # the mirror is fire-and-forget
        (_, headers, got), *_ = shadow.requests
        assert got == as_sent(body, "chat-lora-b")
        assert int(headers[b"content-length"]) == len(got)


async def test_model_past_the_peek_bound_passes_through_untouched(
    tpki: Pki, tmp_path: Path
) -> None:
    gpu = Replica("gpu", {"app": "vllm"})
    body = chat_body(pad=70_000)  # "model" comes after 70 KB of messages
    async with mesh_of(tpki, tmp_path, [gpu], ONE_TARGET) as mesh, mesh.client() as client:
        r = await asyncio.wait_for(
            client.post("/v1/chat/completions", headers=HOST, content=body), T
        )
        assert r.status_code == 200
        (_, headers, got), *_ = gpu.requests
        assert got == body
        assert int(headers[b"content-length"]) == len(body)
        assert b"x-model-name" not in headers


# -- the weighted split, judged by the reference workload ------------------------


@contextlib.asynccontextmanager
async def workload_mesh(ca: Pki, tmp: Path, routing_yaml: str) -> AsyncIterator[Mesh]:
    """Two reference chat servers (label app=vllm), each behind an inbound
    sidecar, and one outbound sidecar routing with ``routing_yaml``."""
    clock = MonotonicClock()
    apps: list[InferenceApp] = []
    servers: list[asyncio.Server] = []
    inbounds: list[ProxyServer] = []
    endpoints: list[EndpointConfig] = []
    mesh: Mesh | None = None
    try:
        for i in range(2):
            app = InferenceApp(Settings(model_name="chat", instance=f"gpu{i}", token_interval_ms=0))
            apps.append(app)
            app_sock = socket.create_server((LOCAL, 0))
            servers.append(await start_server(app, app_sock))
            in_sock = socket.create_server((LOCAL, 0))
            inbound = ProxyServer(
                BootstrapConfig(
                    identity=ca.files(SERVER_ID, f"in-{i}"),
                    admin=None,
                    inbound=InboundConfig(
                        listen=Address(host=LOCAL, port=in_sock.getsockname()[1]),
                        app=Address(host=LOCAL, port=app_sock.getsockname()[1]),
                        mtls=MtlsMode.STRICT,
                        protocol="http",
                    ),
                    outbound=None,
                    timeouts=FAST,
                    limits=Limits(),
                ),
                metrics=GoldenMetrics(),
                clock=clock,
            )
            await inbound.start({"inbound": in_sock})
            inbounds.append(inbound)
            endpoints.append(
                EndpointConfig(
                    address=Address(host=LOCAL, port=in_sock.getsockname()[1]),
                    identity=SERVER_ID,
                    labels=(("app", "vllm"),),
                )
            )
        routes = tmp / "routes.yaml"
        routes.write_text(routing_yaml)
        out_sock = socket.create_server((LOCAL, 0))
        metrics = GoldenMetrics()
        outbound = ProxyServer(
            BootstrapConfig(
                identity=ca.files(CLIENT_ID, "client"),
                admin=None,
                inbound=None,
                outbound=OutboundConfig(
                    listen=Address(host=LOCAL, port=out_sock.getsockname()[1]),
                    services=(
                        ServiceConfig(
                            name="inference", protocol="http", endpoints=tuple(endpoints)
                        ),
                    ),
                    routing=(routes,),
                ),
                timeouts=FAST,
                limits=Limits(),
            ),
            metrics=metrics,
            clock=clock,
        )
        mesh = Mesh(outbound=outbound, inbounds=inbounds, replicas={}, metrics=metrics)
        await outbound.start({"outbound": out_sock})
        yield mesh
    finally:
        if mesh is not None:
            await stop_mesh(mesh)
        else:
            for inbound in inbounds:
                await inbound.close()
        for server in servers:
            server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
        for app in apps:
            app.close()


async def test_weighted_targets_reach_the_model_server_in_their_proportions(
    tpki: Pki, tmp_path: Path
) -> None:
    n, p = 400, 0.3
    routing = pool_routing("[{name: chat-v1, weight: 30}, {name: chat-v2-long-name, weight: 70}]")
    seen: Counter[str] = Counter()
    async with workload_mesh(tpki, tmp_path, routing) as mesh, mesh.client() as client:
        todo = iter(range(n))

        async def worker() -> None:
            for i in todo:
                stream = i % 10 == 0  # some as SSE streams, whose reply headers say it too
                payload = {
                    "model": "chat",
                    "messages": [{"role": "user", "content": f"q{i}"}],
                    "max_tokens": 1,
                    "stream": stream,
                }
                r = await client.post("/v1/chat/completions", headers=HOST, json=payload)
                assert r.status_code == 200, r.text
                seen[r.headers["x-requested-model"]] += 1

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(8))), 120)
    assert set(seen) == {"chat-v1", "chat-v2-long-name"}, seen
    # Binomial bound: |k - np| <= 5.3 sigma fails a true 30/70 split with
    # probability < 1.2e-7 (two-sided normal tail; n p (1-p) = 84 is large enough).
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(seen["chat-v1"] - n * p) <= 5.3 * sigma, seen
