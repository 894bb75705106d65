"""``meshlet proxy`` as a real process with ``outbound.routing`` and endpoint
labels in its bootstrap YAML, in front of in-process inbound sidecars."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pytest
from tests.integration.traffic.mesh_support import (
    CANARY,
    SUBSETS,
    Mesh,
    mesh_of,
    send_many,
    two_versions,
)
from tests.support.pki import Pki
from tests.support.processes import stop_process
from tests.support.sidecars import CLIENT_ID

pytestmark = pytest.mark.integration


def _bootstrap(tpki: Pki, mesh: Mesh, tmp: Path, routes: str) -> Path:
    ident = tpki.files(CLIENT_ID, "proc-client")
    endpoints = []
    for inbound, name in zip(mesh.inbounds, ("v1", "v2"), strict=True):
        addr = inbound.inbound_address
        assert addr is not None
        endpoints.append(
            f'        - {{address: "{addr[0]}:{addr[1]}", identity: '
            f'"spiffe://cluster.local/ns/ml/sa/inference", labels: {{version: {name}}}}}'
        )
    (tmp / "routes").mkdir(exist_ok=True)
    (tmp / "routes" / "inference.yaml").write_text(routes)
    cfg = tmp / "proxy.yaml"
    cfg.write_text(
        f"identity: {{cert: {ident.cert}, key: {ident.key}, bundle: {ident.bundle}}}\n"
        "admin: null\n"
        "outbound:\n"
        "  listen: 127.0.0.1:0\n"
        "  routing: [routes/inference.yaml]\n"  # relative to this file
        "  services:\n"
        "    inference:\n"
        "      endpoints:\n" + "\n".join(endpoints) + "\n"
    )
    return cfg


async def _spawn(cfg: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshlet",
        "proxy",
        "--config",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_proxy_process_routes_with_yaml_routing_and_labels(tpki: Pki, tmp_path: Path) -> None:
    async with mesh_of(tpki, tmp_path, two_versions(), CANARY) as mesh:
        proc = await _spawn(_bootstrap(tpki, mesh, tmp_path, CANARY))
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            ready = json.loads(line)
            assert ready["event"] == "ready"
            url = f"http://{ready['outbound']}"
            async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
                testers = await send_many(client, 30, headers={"x-model-version": "v2"})
                assert testers == {"v2": 30}
                mixed = await send_many(client, 100)
                assert mixed["v1"] + mixed["v2"] == 100
                assert mixed["v1"] > mixed["v2"]  # 90/10 split
        finally:
            await stop_process(proc)


async def test_proxy_process_refuses_bad_routing_with_file_and_line(
    tpki: Pki, tmp_path: Path
) -> None:
    bad = CANARY.replace("subset: v2}, weight: 10}", "subset: v9}, weight: 10}")
    assert "subset: v9" in bad  # a subset no DestinationRule defines
    async with mesh_of(tpki, tmp_path, two_versions(), SUBSETS) as mesh:
        proc = await _spawn(_bootstrap(tpki, mesh, tmp_path, bad))
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode not in (0, None)
            text = err.decode()
            assert "inference.yaml:" in text
            assert "v9" in text
        finally:
            await stop_process(proc)
