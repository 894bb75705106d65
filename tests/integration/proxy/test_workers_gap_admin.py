"""A real ``meshlet proxy --workers 2``: one admin endpoint for the whole sidecar.

Prometheus scrapes one address and sees every worker's requests; /ready speaks
for all workers; a worker that stops answering keeps its counts in the scrape.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.apps import echo_app
from tests.support.http import http_get
from tests.support.pki import Pki, client_context
from tests.support.processes import ProxyProcess, inbound_bootstrap, running_proxy, write_bootstrap
from tests.support.sidecars import CLIENT_ID, SERVER_ID
from tests.support.waiting import STEP_TIMEOUT_S, eventually, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONNECTIONS = 12  # fresh connections, so SO_REUSEPORT spreads them over workers
PER_CONNECTION = 3  # keep-alive requests on each
SENT = CONNECTIONS * PER_CONNECTION


def _samples(text: str) -> dict[str, float]:
    """Sum of every sample of each name (over label sets)."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            sums[s.name] = sums.get(s.name, 0) + s.value
    return sums


def _labelled(text: str, name: str) -> dict[str, float]:
    """worker label -> value, for one per-worker family."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[s.labels.get("worker", "")] = s.value
    return out


async def _scrape(proxy: ProxyProcess, path: str = "/stats/prometheus") -> str:
    status, headers, body = await http_get(*proxy.address("admin"), path)
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return body.decode()


async def _keep_alive(port: int, ctx: ssl.SSLContext, count: int) -> None:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx), STEP_TIMEOUT_S
    )
    try:
        for _ in range(count):
            writer.write(b"GET /w HTTP/1.1\r\nhost: inference\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP_TIMEOUT_S)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await asyncio.wait_for(reader.readexactly(length), STEP_TIMEOUT_S)
    finally:
        writer.close()


async def _send_all(proxy: ProxyProcess, ctx: ssl.SSLContext) -> None:
    port = proxy.address("inbound")[1]
    await asyncio.gather(*(_keep_alive(port, ctx, PER_CONNECTION) for _ in range(CONNECTIONS)))


async def _counted(proxy: ProxyProcess, at_least: int) -> str | None:
    """The scrape once it counts ``at_least`` requests (a worker counts a request
    as its response completes, so a scrape can race the last one)."""
    text = await _scrape(proxy)
    return text if _samples(text).get("istio_requests_total", 0) >= at_least else None


def _config(pki: Pki, tmp_path: Path, app_port: int) -> Path:
    files = pki.files(SERVER_ID, "server")
    config: dict[str, Any] = inbound_bootstrap(files, app_port, mtls="STRICT")
    config["workload"] = {"name": "inference", "namespace": "ml"}
    config["timeouts"] = {"drain_s": 30.0}  # far beyond the slow request below
    return write_bootstrap(tmp_path / "proxy.yaml", config)


async def test_one_admin_counts_every_request_of_every_worker(pki: Pki, tmp_path: Path) -> None:
    ctx = client_context(pki.files(CLIENT_ID, "client"))
    async with (
        echo_app() as app,
        running_proxy(_config(pki, tmp_path, app.port), workers=2) as proxy,
    ):
        assert {r["admin"] for r in proxy.ready} == {proxy.ready[0]["admin"]}
        admin = proxy.address("admin")
        status, _, body = await http_get(*admin, "/ready")
        assert (status, body) == (200, b"LIVE\n")
        await _send_all(proxy, ctx)

        text = await eventually(lambda: _counted(proxy, SENT))
        sums = _samples(text)
        assert sums["istio_requests_total"] == SENT
        assert sums["istio_request_duration_milliseconds_count"] == SENT
        per_worker = _labelled(text, "meshlet_worker_requests_total")
        assert set(per_worker) == {"0", "1"}
        assert sum(per_worker.values()) == SENT
        assert set(_labelled(text, "meshlet_process_resident_memory_bytes")) == {"0", "1", "parent"}
        assert sums["meshlet_workers_alive"] == 2
        assert _samples(await _scrape(proxy, "/metrics"))["istio_requests_total"] == SENT

        status, _, body = await http_get(*admin, "/certs")
        assert status == 200
        assert json.loads(body)["certificates"][0]["spiffe_id"] == SERVER_ID
        status, _, body = await http_get(*admin, "/config_dump")
        assert status == 200
        assert json.loads(body)["identity"]["spiffe_id"] == SERVER_ID
        assert (await http_get(*admin, "/live"))[0] == 200
        assert await proxy.stop() == 0


async def test_sigterm_turns_the_one_ready_to_503_while_workers_drain(
    pki: Pki, tmp_path: Path
) -> None:
    ctx = client_context(pki.files(CLIENT_ID, "client"))
    async with (
        echo_app() as app,
        running_proxy(_config(pki, tmp_path, app.port), workers=2) as proxy,
    ):
        admin = proxy.address("admin")
        inbound = proxy.address("inbound")
        # 8 s in the app: the one admin must answer 503 well before the workers
        # finish draining and the parent closes it, even on a stalled machine.
        slow = asyncio.create_task(http_get(*inbound, "/slow?ms=8000", ssl_ctx=ctx, timeout_s=40.0))
        await wait_until(lambda: bool(app.headers_seen))
        proxy.process.send_signal(signal.SIGTERM)

        async def not_ready() -> bool:
            return (await http_get(*admin, "/ready"))[0] == 503

        await eventually(not_ready)
        status, _, _ = await slow
        assert status == 200
        assert await asyncio.wait_for(proxy.process.wait(), 40.0) == 0


async def test_a_worker_that_stops_answering_keeps_its_counts(pki: Pki, tmp_path: Path) -> None:
    ctx = client_context(pki.files(CLIENT_ID, "client"))
    async with (
        echo_app() as app,
        running_proxy(_config(pki, tmp_path, app.port), workers=2) as proxy,
    ):
        await _send_all(proxy, ctx)
        await eventually(lambda: _counted(proxy, SENT))
        pid = next(int(r["pid"]) for r in proxy.ready if r["worker"] == 1)
        os.kill(pid, signal.SIGSTOP)  # alive, but its admin cannot answer
        try:
            text = await _scrape(proxy)  # waits out the parent's per-worker deadline
            assert _samples(text)["istio_requests_total"] == SENT  # nothing lost, nothing new
            assert "1" not in _labelled(text, "meshlet_process_resident_memory_bytes")
            assert (await http_get(*proxy.address("admin"), "/ready"))[0] == 503
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await proxy.stop() == 0
