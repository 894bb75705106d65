"""Faults, body limits, timeouts, retry safety and inference load shedding
through real sidecars."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.integration.traffic.mesh_support import Replica, dr, mesh_of, vs
from tests.support.inference_yaml import inference_model, pool_routing
from tests.support.pki import Pki
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

HOST = {"host": "inference"}


async def test_fault_abort_and_delay(tpki: Pki, tmp_path: Path) -> None:
    routing = vs(
        "  - match: [{headers: {x-fault: {exact: abort}}}]\n"
        "    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n"
        "    route: [{destination: {host: inference}}]\n"
        "  - match: [{headers: {x-fault: {exact: delay}}}]\n"
        "    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}\n"
        "    route: [{destination: {host: inference}}]\n"
        "  - route: [{destination: {host: inference}}]"
    )
    app = Replica("app", {})
    async with mesh_of(tpki, tmp_path, [app], routing) as mesh, mesh.client() as client:
        r = await asyncio.wait_for(client.get("/", headers={**HOST, "x-fault": "abort"}), 15)
        assert r.status_code == 418
        assert r.headers["x-meshlet-error"] == "fault_abort"
        assert app.hits == 0
        t0 = time.perf_counter()
        r = await asyncio.wait_for(client.get("/", headers={**HOST, "x-fault": "delay"}), 15)
        assert r.status_code == 200
        assert time.perf_counter() - t0 >= 0.3
        assert app.hits == 1


async def test_body_limit_is_413_while_streaming(tpki: Pki, tmp_path: Path) -> None:
    routing = vs(
        "  - route: [{destination: {host: inference}}]",
        annotations='meshlet.io/max-request-body-bytes: "1000"',
    )
    app = Replica("app", {})
    async with mesh_of(tpki, tmp_path, [app], routing) as mesh, mesh.client() as client:
        r = await asyncio.wait_for(client.post("/", headers=HOST, content=b"a" * 1000), 15)
        assert r.status_code == 200
        r = await asyncio.wait_for(client.post("/", headers=HOST, content=b"a" * 1001), 15)
        assert r.status_code == 413  # declared by Content-Length: refused before sending

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"b" * 400

        r = await asyncio.wait_for(client.post("/", headers=HOST, content=chunks()), 15)
        assert r.status_code == 413  # chunked: counted while streaming
        assert r.headers["x-meshlet-error"] == "body_too_large"
        assert [len(body) for _, _, body in app.requests] == [1000]


async def test_total_timeout_is_504(tpki: Pki, tmp_path: Path) -> None:
    routing = vs("  - route: [{destination: {host: inference}}]\n    timeout: 300ms")
    slow = Replica("slow", {}, delay_s=6.0)
    async with mesh_of(tpki, tmp_path, [slow], routing) as mesh, mesh.client() as client:
        t0 = time.perf_counter()
        r = await asyncio.wait_for(client.get("/", headers=HOST), 15)
        assert r.status_code == 504
        assert time.perf_counter() - t0 < 4.0  # the 300 ms route timeout, not the 6 s answer


async def test_per_try_timeout_retries_on_another_replica(tpki: Pki, tmp_path: Path) -> None:
    routing = vs(
        "  - route: [{destination: {host: inference}}]\n"
        "    retries: {attempts: 2, perTryTimeout: 300ms, retryOn: gateway-error}"
    ) + dr("{loadBalancer: {simple: ROUND_ROBIN}}")
    stuck, ok = Replica("stuck", {}, hang=True), Replica("ok", {})
    async with mesh_of(tpki, tmp_path, [stuck, ok], routing) as mesh, mesh.client() as client:
        for _ in range(4):
            r = await asyncio.wait_for(client.get("/", headers=HOST), 15)
            assert r.status_code == 200, (r.headers, r.text)
            assert r.headers["x-served-by"] == "ok"
        assert stuck.hits >= 1


async def test_no_retry_once_body_streamed_past_replay_buffer(tpki: Pki, tmp_path: Path) -> None:
    routing = vs(
        "  - route: [{destination: {host: inference}}]\n    retries: {attempts: 2, retryOn: 5xx}"
    )
    flaky = Replica("flaky", {}, fail_next=1)
    async with mesh_of(tpki, tmp_path, [flaky], routing) as mesh, mesh.client() as client:
        r = await asyncio.wait_for(client.post("/", headers=HOST, content=b"s" * 1024), 15)
        assert r.status_code == 200  # replayed from the buffer
        assert [len(b) for _, _, b in flaky.requests] == [1024, 1024]
        flaky.fail_next = 1
        r = await asyncio.wait_for(client.post("/", headers=HOST, content=b"L" * 100_000), 15)
        assert r.status_code == 503  # 100 KB > 64 KiB: not replayable
        assert len(flaky.requests) == 3


POOL = pool_routing(
    inference_model("batch", "Sheddable"),
    inference_model("chat", "Critical"),
    max_concurrency_per_endpoint=1,
)


async def test_sheddable_gets_429_when_pool_is_full_critical_waits(
    tpki: Pki, tmp_path: Path
) -> None:
    gpu = Replica("gpu", {"app": "vllm"}, delay_s=2.0)
    async with mesh_of(tpki, tmp_path, [gpu], POOL) as mesh, mesh.client() as client:
        first = asyncio.create_task(client.post("/v2/models/batch/infer", headers=HOST))
        await wait_until(lambda: gpu.hits > 0)  # the first request occupies the only slot
        gauge = re.search(
            r'meshlet_endpoint_outstanding_requests\{cluster="llm-pool",endpoint="[^"]+"\} (\d+)',
            mesh.metrics.render().decode(),
        )
        assert gauge is not None
        assert gauge.group(1) == "1"
        shed = await asyncio.wait_for(client.post("/v2/models/batch/infer", headers=HOST), 15)
        assert shed.status_code == 429
        assert not first.done()  # at once, not after the slot frees (2 s)
        critical = await asyncio.wait_for(client.post("/v2/models/chat/infer", headers=HOST), 15)
        assert critical.status_code == 200  # queued for the slot, then served
        assert (await asyncio.wait_for(first, 15)).status_code == 200
        assert gpu.hits == 2


async def test_connect_failure_is_retried_on_another_endpoint_and_ejected(
    tpki: Pki, tmp_path: Path
) -> None:
    # Istio's default retry policy (2 attempts on connect-failure, ...) applies
    # when the route says nothing; the dead endpoint is then ejected.
    routing = vs("  - route: [{destination: {host: inference}}]") + dr(
        "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: "
        "{consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 30s, "
        "maxEjectionPercent: 50}}"
    )
    gone, alive = Replica("gone", {}), Replica("alive", {})
    async with mesh_of(tpki, tmp_path, [gone, alive], routing) as mesh, mesh.client() as client:
        await mesh.inbounds[0].close()  # gone's sidecar: connections are refused now
        for _ in range(10):
            r = await asyncio.wait_for(client.get("/", headers=HOST), 15)
            assert r.status_code == 200
            assert r.headers["x-served-by"] == "alive"
        assert mesh.metrics.upstream_errors().get("connect", 0) == 2  # then ejected


async def test_streamed_body_past_limit_is_cut_upstream_and_connection_goes_on(
    tpki: Pki, tmp_path: Path
) -> None:
    routing = vs(
        "  - route: [{destination: {host: inference}}]",
        annotations='meshlet.io/max-request-body-bytes: "100"',
    )
    app = Replica("app", {})
    async with mesh_of(tpki, tmp_path, [app], routing) as mesh, mesh.client() as client:

        async def chunks() -> AsyncIterator[bytes]:
            yield b"x" * 60
            await asyncio.sleep(0.05)
            yield b"y" * 60

        for _ in range(3):
            r = await asyncio.wait_for(client.post("/", headers=HOST, content=chunks()), 15)
            assert r.status_code == 413
        r = await asyncio.wait_for(client.get("/", headers=HOST), 15)
        assert r.status_code == 200  # the same keep-alive connection goes on
        # The cut attempts never completed upstream: only the GET did.
        assert [line for line, _, _ in app.requests] == [b"GET / HTTP/1.1"]
