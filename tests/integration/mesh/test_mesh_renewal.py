"""Certificates renewed by ``meshlet up`` while requests flow: no request fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshlet.config.mesh import load_mesh
from meshlet.mesh.probe import http_get
from meshlet.mesh.runner import MeshRunner, renew_due
from meshlet.workloads.client import HttpClient

pytestmark = pytest.mark.integration

MESH = """\
services:
  inference:
    namespace: ml
    workloads:
      - command: "{python} -m meshlet.workloads.inference --port {port} --backend numpy"
        readiness: /v2/health/ready
clients:
  frontend:
    command: ["{python}", "-c", "import time; time.sleep(600)"]
"""


async def _certs(runner: MeshRunner, replica: str) -> bytes:
    admin = next(r.admin for r in runner.replicas if r.plan.name == replica)
    assert admin is not None
    host, _, port = admin.rpartition(":")
    status, body = await http_get(host, int(port), "/certs")
    assert status == 200
    return body


def test_renewal_is_due_at_half_life() -> None:
    assert not renew_due(100.0, 200.0, 149.9)
    assert renew_due(100.0, 200.0, 150.0)
    assert renew_due(100.0, 200.0, 105.0, fraction=0.05)


async def test_svids_renew_under_load_with_no_failed_request(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    events: list[str] = []
    runner = MeshRunner(
        load_mesh(tmp_path / "mesh.yaml"),
        on_event=events.append,
        svid_ttl_s=60.0,
        renew_check_s=0.2,
        renew_fraction=0.05,
    )
    await asyncio.wait_for(runner.start(), 90)
    try:
        frontend = next(r for r in runner.replicas if r.plan.name == "frontend-0")
        before = {name: await _certs(runner, name) for name in ("inference-0", "frontend-0")}
        start_renewals = runner.renewals
        statuses: list[int] = []
        client = HttpClient(frontend.plan.outbound_url)
        async with asyncio.timeout(40):
            # Until both sidecars renewed twice (new handshakes need the new certs),
            # plus the sidecars' one-second file poll; bounded in count as well.
            while runner.renewals < start_renewals + 4 and len(statuses) < 20_000:
                reply = await client.request("GET", "http://inference/v2/health/live")
                statuses.append(reply.status)
                if len(statuses) % 50 == 0:
                    await client.close()  # fresh connections: new mTLS handshakes too
            for _ in range(100):
                reply = await client.request("GET", "http://inference/v2/health/live")
                statuses.append(reply.status)
                await asyncio.sleep(0.015)
        await client.close()
        after = {name: await _certs(runner, name) for name in before}
    finally:
        await runner.stop()
    assert [s for s in statuses if s != 200] == []
    assert len(statuses) > 100
    assert all(after[name] != before[name] for name in before), "a sidecar kept its old cert"
    assert not [e for e in events if "renewal failed" in e]
