"""Retries, outlier ejection, pool overflow, mirrors, stream idle timeouts and
P2C-EWMA through real sidecars, with upstreams that misbehave on cue."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import httpx
import pytest
from tests.integration.traffic.mesh_support import Replica, dr, mesh_of, send_many, vs
from tests.support.pki import Pki
from tests.support.waiting import eventually, wait_until

pytestmark = pytest.mark.integration


async def test_5xx_burst_ejects_then_endpoint_returns(tpki: Pki, tmp_path: Path) -> None:
    routing = vs("  - route: [{destination: {host: inference}}]\n    retries: {attempts: 0}") + dr(
        "{loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: {consecutive5xxErrors: 3, "
        "interval: 500ms, baseEjectionTime: 5s, maxEjectionPercent: 50}}"
    )
    bad, good = Replica("bad", {}, status=500), Replica("good", {})
    async with mesh_of(tpki, tmp_path, [bad, good], routing) as mesh, mesh.client() as client:
        await send_many(client, 12, concurrency=1)
        assert bad.hits == 3  # ejected after the third 500 in a row
        # 16 sequential requests since the ejection: well inside its 5 s, even on a
        # loaded machine, so none of them may reach the bad replica.
        await send_many(client, 10, concurrency=1)
        assert bad.hits == 3
        assert good.hits == 19
        bad.status = 200

        async def returned() -> bool:  # one request at a time until one reaches it
            return (await send_many(client, 1, concurrency=1))["bad"] > 0

        # baseEjectionTime x 1, then the next 500 ms detector sweep, read on the
        # sidecar's coarse clock (refreshed every 500 ms here): about 5.5 s.
        await eventually(returned, timeout_s=30.0)
        counts = await send_many(client, 20, concurrency=1)
        assert counts["bad"] >= 5, counts


async def test_retries_succeed_on_flaky_replica_and_stop_at_budget(
    tpki: Pki, tmp_path: Path
) -> None:
    routing = vs(
        "  - route: [{destination: {host: inference}}]\n    retries: {attempts: 3, retryOn: 5xx}"
    )
    flaky = Replica("flaky", {}, fail_next=2)
    async with mesh_of(tpki, tmp_path, [flaky], routing) as mesh, mesh.client() as client:
        r = await asyncio.wait_for(client.get("/", headers={"host": "inference"}), 10)
        assert r.status_code == 200
        assert flaky.hits == 3
        # Now it always fails: 150 requests would want 450 retries; the budget
        # allows 10/s x 10 s + 20 % of the requests (Linkerd's defaults).
        flaky.status = 503
        before = flaky.hits
        started = time.monotonic()
        counts = await send_many(client, 150, concurrency=8)
        elapsed = time.monotonic() - started
        assert counts == {"503": 150}
        retries = flaky.hits - before - 150
        # The budget is a window of ten one-second buckets. Normally the requests
        # take a second or two and one window holds them all. On a machine so
        # loaded that they spread over more, the oldest buckets expire and each
        # further window brings its own allowance (+1 s for the coarse clock).
        windows = math.ceil((math.ceil(elapsed) + 2) / 10)
        assert 100 <= retries <= windows * (100 + 0.2 * 151) + 1, (retries, elapsed)


async def test_pending_overflow_is_503_and_mesh_stays_up(tpki: Pki, tmp_path: Path) -> None:
    routing = vs("  - route: [{destination: {host: inference}}]\n    retries: {attempts: 0}") + dr(
        "{connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}}"
    )
    # 2 s per answer: all six requests arrive while the first is still held, even
    # when a loaded machine staggers their sending.
    slow = Replica("slow", {}, delay_s=2.0)
    async with mesh_of(tpki, tmp_path, [slow], routing) as mesh, mesh.client() as client:
        host = {"host": "inference"}
        replies = await asyncio.wait_for(
            asyncio.gather(*(client.get("/", headers=host) for _ in range(6))), 30
        )
        codes = sorted(r.status_code for r in replies)
        assert codes == [200, 200, 503, 503, 503, 503], codes
        refused = [r for r in replies if r.status_code == 503]
        assert all(r.headers["x-meshlet-error"] == "overflow" for r in refused)
        assert "http1_max_pending_requests" in refused[0].text
        assert mesh.metrics.upstream_errors()["overflow"] == 4
        slow.delay_s = 0.0
        r = await asyncio.wait_for(client.get("/", headers=host), 15)
        assert r.status_code == 200


async def test_hanging_mirror_never_slows_the_caller(tpki: Pki, tmp_path: Path) -> None:
    routing = vs(
        "  - route: [{destination: {host: inference}}]\n"
        "    mirror: {host: shadow}\n"
        "    mirrorPercentage: {value: 100}"
    )
    main, shadow = Replica("main", {}), Replica("shadow", {}, hang=True)
    async with (
        mesh_of(tpki, tmp_path, [main], routing, extra_services={"shadow": [shadow]}) as mesh,
        mesh.client() as client,
    ):
        slowest = 0.0
        for i in range(30):
            t0 = time.perf_counter()
            r = await asyncio.wait_for(
                client.post("/x", headers={"host": "inference"}, content=b"req%d" % i), 5
            )
            slowest = max(slowest, time.perf_counter() - t0)
            assert r.status_code == 200
            assert r.headers["x-served-by"] == "main"
        assert main.hits == 30
        # The shadow never answers (its copies are cut after 5 s): a caller that
        # waited on it would take 5 s; 4 s leaves room for a loaded machine.
        assert slowest < 4.0, slowest
        await wait_until(lambda: shadow.hits > 0)  # the copies arrive in the background
        assert 1 <= shadow.hits <= 30
        _, headers, body = shadow.requests[0]
        assert headers[b"host"] == b"inference-shadow"
        assert body.startswith(b"req")


async def test_sse_stream_outlives_short_idle_timeout_and_stalled_one_is_cut(
    tpki: Pki, tmp_path: Path
) -> None:
    # The 60 s of tokens vs a 5 s idle timeout, scaled to 6 s vs 1 s (a
    # token every 0.1 s: a stalled loop on a loaded machine is no idle stream).
    routing = vs(
        "  - route: [{destination: {host: inference}}]",
        annotations='meshlet.io/stream-idle-timeout: "1s"',
    )
    gen = Replica("gen", {}, sse_tokens=60, sse_interval_s=0.1)
    async with mesh_of(tpki, tmp_path, [gen], routing) as mesh, mesh.client() as client:
        host = {"host": "inference"}
        t0 = time.perf_counter()
        r = await asyncio.wait_for(client.get("/v1/stream", headers=host), 30)
        assert r.status_code == 200
        assert r.text.count("data: token") == 60
        assert time.perf_counter() - t0 >= 5.5
        gen.sse_stall_after = 5
        got: list[str] = []
        t0 = time.perf_counter()

        async def read_stream() -> None:
            async with client.stream("GET", "/v1/stream", headers=host) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    got.append(line)

        with pytest.raises(httpx.RemoteProtocolError):
            await asyncio.wait_for(read_stream(), 15)
        assert sum(1 for g in got if g.startswith("data:")) == 5
        assert time.perf_counter() - t0 < 8.0  # 0.5 s of tokens, then the 1 s idle cut


async def test_p2c_moves_load_away_from_a_replica_10x_slower(tpki: Pki, tmp_path: Path) -> None:
    # "inference" has no routing config here: the unrouted fast path's picker.
    other = dr("{}").replace("host: inference", "host: elsewhere").lstrip("-\n")
    # 30 ms vs 300 ms: at 10 ms vs 100 ms a loaded machine's scheduling delays
    # (peak-EWMA believes a slow sample at once) sent up to 25 of 200 to the slow
    # replica in 8 trials under 3 busy loops; at these: up to 13.
    fast, slow = Replica("fast", {}, delay_s=0.03), Replica("slow", {}, delay_s=0.3)
    async with mesh_of(tpki, tmp_path, [fast, slow], other) as mesh, mesh.client() as client:
        counts = await send_many(client, 200, concurrency=4)
        assert counts["fast"] + counts["slow"] == 200
        assert counts["slow"] < 40, counts  # round robin would send 100
