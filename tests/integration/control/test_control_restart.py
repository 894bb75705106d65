"""Real processes: the control plane is killed and restarted under load, and the
data plane neither fails a request nor re-applies what it already runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from tests.integration.control.conftest import (
    ECHO_ID,
    FRONTEND_ID,
    TD,
    App,
)
from tests.support.processes import Proc, spawn
from tests.support.waiting import eventually

from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.proxy.control_client import ControlClient

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_REQUESTS = 20_000  # bounds the load loop whatever the machine's speed
MAX_LOAD_S = 90.0


def proxy_args(
    url: str, ca: CertificateAuthority, workload: str, spiffe_id: str, state: Path
) -> list[str]:
    token = ca.issue_join_token(SpiffeId.parse(spiffe_id), now=time.time())
    return [
        "proxy",
        "--control",
        url,
        "--token",
        token,
        "--workload",
        workload,
        "--bundle",
        str(ca.directory / "bundle.pem"),
        "--state-dir",
        str(state),
        "--inbound",
        "127.0.0.1:0",
        "--outbound",
        "127.0.0.1:0",
    ]


def count(log: Path, event: str) -> int:
    return log.read_text().count(event)


class Load:
    """Sequential requests through the frontend's sidecar until stopped."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.ok = 0
        self.failed: list[str] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        deadline = time.monotonic() + MAX_LOAD_S
        while not self.stop.is_set() and self.ok + len(self.failed) < MAX_REQUESTS:
            if time.monotonic() > deadline:
                break
            try:
                response = await self.client.get("http://echo/hello")
            except httpx.HTTPError as exc:
                self.failed.append(repr(exc))
                continue
            if response.status_code == 200:
                self.ok += 1
            else:
                self.failed.append(f"{response.status_code} {response.text[:100]}")


async def status_of(url: str, ca: CertificateAuthority) -> dict[str, object]:
    import json

    client = ControlClient(
        url=url, bundle_pem=ca.bundle_pem(), control_id=str(SpiffeId.control_plane(TD)), cert=None
    )
    try:
        code, body = await client.call("GET", "/v1/status")
    finally:
        client.reset()
    assert code == 200
    result: dict[str, object] = json.loads(body)
    return result


async def test_control_plane_restart_under_load(
    ca: CertificateAuthority, config_dir: Path, app: App, tmp_path: Path
) -> None:
    control_args = [
        "control",
        "--config-dir",
        str(config_dir),
        "--ca-dir",
        str(ca.directory),
        "--listen",
        "127.0.0.1:0",
        "--hold",
        "2",
    ]
    procs: list[Proc] = []
    try:
        control = await spawn(control_args, tmp_path / "control.log")
        procs.append(control)
        url = f"https://{control.ready['listen']}"
        echo = await spawn(
            proxy_args(url, ca, "echo", ECHO_ID, tmp_path / "echo"), tmp_path / "echo.log"
        )
        procs.append(echo)
        front = await spawn(
            proxy_args(url, ca, "frontend", FRONTEND_ID, tmp_path / "fe"), tmp_path / "fe.log"
        )
        procs.append(front)
        proxy = f"http://{front.ready['outbound']}"
        async with httpx.AsyncClient(proxy=proxy, timeout=10.0) as client:

            async def echo_reachable() -> bool:
                return (await client.get("http://echo/hello")).status_code == 200

            await eventually(echo_reachable, timeout_s=30.0)

            async def resynced() -> bool:
                status = await status_of(url, ca)
                proxies = status["proxies"]
                assert isinstance(proxies, list)
                return len(proxies) == 2 and all(p["in_sync"] for p in proxies)

            await eventually(resynced, timeout_s=30.0)  # settled: echo knows itself too
            applied_before = count(tmp_path / "fe.log", "snapshot_applied") + count(
                tmp_path / "echo.log", "snapshot_applied"
            )
            load = Load(client)
            task = asyncio.create_task(load.run())
            await eventually(lambda: load.ok >= 20, timeout_s=30.0)

            control.kill()
            await asyncio.wait_for(control.process.wait(), 10.0)
            during = load.ok
            await eventually(lambda: load.ok >= during + 50, timeout_s=30.0)  # still serving

            args = [*control_args[:-3], control.ready["listen"], "--hold", "2"]
            control = await spawn(args, tmp_path / "control2.log")
            procs.append(control)
            await eventually(resynced, timeout_s=30.0)
            after_restart = load.ok
            await eventually(lambda: load.ok >= after_restart + 20, timeout_s=30.0)
            load.stop.set()
            await asyncio.wait_for(task, 30.0)

        assert load.failed == []
        assert load.ok > 90
        applied_after = count(tmp_path / "fe.log", "snapshot_applied") + count(
            tmp_path / "echo.log", "snapshot_applied"
        )
        assert applied_after == applied_before  # resync found nothing to re-apply
        assert "control_unreachable" in (tmp_path / "fe.log").read_text()
        assert "Traceback" not in (tmp_path / "control2.log").read_text()
    finally:
        for proc in reversed(procs):
            await proc.stop()
