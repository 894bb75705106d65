"""``meshlet up`` with its control plane: config pushed live under load, an invalid
change refused while traffic continues, and a control-plane crash that no request
notices."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import ssl
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from meshlet.config.mesh import load_mesh
from meshlet.mesh.runner import MeshRunner
from meshlet.workloads.client import HttpClient

pytestmark = pytest.mark.integration

MESH = """\
services:
  inference:
    namespace: ml
    workloads:
      - command: "{python} -m meshlet.workloads.inference --port {port} --backend numpy"
        replicas: 2
        labels: {app: inference}
        readiness: /v2/health/ready
clients:
  frontend:
    namespace: web
    command: ["{python}", "-c", "import time; time.sleep(600)"]
"""

DENY_LIVE = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-live, namespace: ml}
spec:
  selector: {matchLabels: {app: inference}}
  action: DENY
  rules:
    - to: [{operation: {paths: ["/v2/health/live"]}}]
"""

BROKEN = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: ml}
spec:
  action: DENY
  rulez: []
"""


class Load:
    """Alternating requests to /live and /ready through the frontend's sidecar."""

    def __init__(self, proxy: str) -> None:
        self.client = HttpClient(proxy)
        self.seen: list[tuple[str, int]] = []

    async def until(self, done: Callable[[], bool], limit_s: float) -> None:
        async with asyncio.timeout(limit_s):
            while not done() and len(self.seen) < 50_000:
                for path in ("live", "ready"):
                    reply = await self.client.request("GET", f"http://inference/v2/health/{path}")
                    self.seen.append((path, reply.status))
                await asyncio.sleep(0.005)

    async def for_s(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        await self.until(lambda: loop.time() >= end, seconds + 10)

    def since(self, mark: int) -> Counter[tuple[str, int]]:
        return Counter(self.seen[mark:])

    def last(self, path: str) -> int:
        return next(s for p, s in reversed(self.seen) if p == path)


def _status(runner: MeshRunner) -> dict:  # type: ignore[type-arg]
    import urllib.request

    ctx = ssl.create_default_context(cafile=str(runner.config.state_dir / "ca" / "bundle.pem"))
    ctx.check_hostname = False  # SPIFFE certificates carry a URI SAN, no host name
    with urllib.request.urlopen(f"{runner.control_url}/v1/status", context=ctx, timeout=5) as r:
        data: dict = json.loads(r.read())  # type: ignore[type-arg]
    return data


def _all_in_sync(runner: MeshRunner) -> bool:
    """Every sidecar has acknowledged the control plane's current snapshot."""
    return all(p["in_sync"] for p in _status(runner)["proxies"])


async def test_live_config_invalid_change_and_control_plane_crash(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    config = dataclasses.replace(load_mesh(tmp_path / "mesh.yaml"), control_plane=True)
    events: list[str] = []
    runner = MeshRunner(config, on_event=events.append)
    await asyncio.wait_for(runner.start(), 120)
    try:
        frontend = next(r for r in runner.replicas if r.plan.name == "frontend-0")
        load = Load(frontend.plan.outbound_url)

        await load.for_s(1.0)
        assert set(load.since(0)) == {("live", 200), ("ready", 200)}

        # 1. A config change reaches the sidecars while requests flow.
        mark = len(load.seen)
        (tmp_path / "deny-live.yaml").write_text(DENY_LIVE)
        # Until both inference replicas run it: one answering 403 says nothing about
        # the other (its 200 would then end the window and break the checks below).
        await load.until(lambda: load.last("live") == 403 and _all_in_sync(runner), 30)
        await load.for_s(0.5)
        window = load.since(mark)
        assert set(window) <= {("live", 200), ("live", 403), ("ready", 200)}, window
        assert load.last("live") == 403

        # 2. An invalid change is refused as a whole; traffic keeps the last good config.
        mark = len(load.seen)
        (tmp_path / "broken.yaml").write_text(BROKEN)
        for _ in range(100):
            if _status(runner)["config"].get("refused"):
                break
            await load.for_s(0.1)
        assert _status(runner)["config"]["refused"], "the broken file was not refused"
        await load.for_s(1.0)
        assert set(load.since(mark)) == {("live", 403), ("ready", 200)}
        (tmp_path / "broken.yaml").unlink()

        # 3. The control plane crashes; the data plane does not notice.
        assert runner.control is not None
        control = runner.control.process
        assert control.pid is not None
        old_pid = control.pid
        mark = len(load.seen)
        os.kill(old_pid, signal.SIGKILL)
        await load.for_s(2.0)
        assert set(load.since(mark)) == {("live", 403), ("ready", 200)}
        await load.until(lambda: control.running and control.pid != old_pid, 30)

        # ... and it resyncs on return: removing the policy is pushed again.
        mark = len(load.seen)
        (tmp_path / "deny-live.yaml").unlink()
        await load.until(lambda: load.last("live") == 200, 45)
        assert set(load.since(mark)) <= {("live", 200), ("live", 403), ("ready", 200)}
        await load.client.close()
    finally:
        await runner.stop()
    assert any("control plane exited" in e for e in events)
