"""Real ``meshlet proxy`` processes whose bootstraps name no workload: the metric
labels for the local workload come from each sidecar's SVID, on the source
reporter's series (outbound) and the destination reporter's (inbound)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.pki import Pki
from tests.support.processes import (
    inbound_bootstrap,
    outbound_bootstrap,
    start_proxy,
    stop_process,
    write_bootstrap,
)
from tests.support.proxy_app import start_app
from tests.support.sidecars import CLIENT_ID, SERVER_ID

pytestmark = [pytest.mark.integration, pytest.mark.slow]
T = 20.0


async def _start(config: Path) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    proxy = await start_proxy(config)
    return proxy.process, proxy.ready[0]


def _series(text: str, name: str, reporter: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith(name + "{") and f'reporter="{reporter}"' in line
    ]


async def test_workload_labels_come_from_the_svid(pki: Pki, tmp_path: Path) -> None:
    app, stats, app_port = await start_app()
    server, client = pki.files(SERVER_ID, "server"), pki.files(CLIENT_ID, "client")
    write_bootstrap(tmp_path / "in.yaml", inbound_bootstrap(server, app_port))
    procs: list[asyncio.subprocess.Process] = []
    try:
        inbound, ready_in = await _start(tmp_path / "in.yaml")
        procs.append(inbound)
        endpoint = {"address": ready_in["inbound"], "identity": SERVER_ID}
        services = {"inference": {"endpoints": [endpoint]}}
        write_bootstrap(tmp_path / "out.yaml", outbound_bootstrap(client, services))
        outbound, ready_out = await _start(tmp_path / "out.yaml")
        procs.append(outbound)
        async with httpx.AsyncClient(proxy=f"http://{ready_out['outbound']}", timeout=T) as c:
            assert (await c.get("http://inference/hello")).status_code == 200
        async with httpx.AsyncClient(timeout=T) as c:
            out_text = (await c.get(f"http://{ready_out['admin']}/stats/prometheus")).text
            in_text = (await c.get(f"http://{ready_in['admin']}/stats/prometheus")).text
    finally:
        for p in procs:
            await stop_process(p, T)
        app.close()
        stats.close_all()
    (source,) = _series(out_text, "istio_requests_total", "source")
    assert 'source_workload="client"' in source
    assert 'source_workload_namespace="apps"' in source
    assert 'destination_workload_namespace="ml"' in source  # from the peer's principal
    (destination,) = _series(in_text, "istio_requests_total", "destination")
    assert 'destination_workload="inference"' in destination
    assert 'destination_workload_namespace="ml"' in destination
    assert 'source_workload_namespace="apps"' in destination
