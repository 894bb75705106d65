"""Real `meshlet proxy` processes: a large upload passes in bounded memory,
SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from tests.support.pki import Pki
from tests.support.processes import (
    inbound_bootstrap,
    outbound_bootstrap,
    start_proxy,
    write_bootstrap,
)
from tests.support.proxy_app import start_app
from tests.support.sidecars import CLIENT_ID, SERVER_ID

pytestmark = [pytest.mark.integration, pytest.mark.slow]
T = 20.0
# 256 MiB keeps the suite quick; MESHLET_TEST_UPLOAD_MIB=1024 runs the 1 GiB.
UPLOAD = int(os.environ.get("MESHLET_TEST_UPLOAD_MIB", "256")) * 1024 * 1024


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def _start_proxy(config: Path) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    proxy = await start_proxy(config)
    ready = proxy.ready[0]
    assert ready["event"] == "ready"
    return proxy.process, ready


async def _stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), T)


async def test_large_upload_bounded_memory_and_sigterm_exit_0(pki: Pki, tmp_path: Path) -> None:
    app, stats, app_port = await start_app()
    server, client = pki.files(SERVER_ID, "server"), pki.files(CLIENT_ID, "client")
    write_bootstrap(tmp_path / "in.yaml", inbound_bootstrap(server, app_port, admin=None))
    procs = []
    try:
        inbound, ready_in = await _start_proxy(tmp_path / "in.yaml")
        procs.append(inbound)
        endpoint = {"address": ready_in["inbound"], "identity": SERVER_ID}
        services = {"inference": {"endpoints": [endpoint]}}
        write_bootstrap(tmp_path / "out.yaml", outbound_bootstrap(client, services, admin=None))
        outbound, ready_out = await _start_proxy(tmp_path / "out.yaml")
        procs.append(outbound)
        pids = [inbound.pid, outbound.pid]
        before = [_rss_mib(p) for p in pids]
        peak = list(before)

        async def sample() -> None:
            while True:
                for i, p in enumerate(pids):
                    peak[i] = max(peak[i], _rss_mib(p))
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        host, port = ready_out["outbound"].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /count HTTP/1.1\r\nhost: inference\r\ncontent-length: %d\r\n\r\n" % UPLOAD
        )
        piece = b"z" * (1024 * 1024)
        for _ in range(UPLOAD // len(piece)):  # bounded: 256 writes
            writer.write(piece)
            await asyncio.wait_for(writer.drain(), T)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        body = await asyncio.wait_for(reader.readuntil(b"}"), T)
        sampler.cancel()
        writer.close()
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(body) == {"bytes": UPLOAD}
        growth = [p - b for p, b in zip(peak, before, strict=True)]
        print(f"RSS before {before} MiB, peak {peak} MiB during a {UPLOAD >> 20} MiB upload")
        assert max(growth) < 64, f"RSS grew {growth} MiB for a {UPLOAD >> 20} MiB upload"
        codes = [await _stop(p) for p in procs]
        assert codes == [0, 0]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        app.close()
        stats.close_all()
