"""Control-plane mode of ``meshlet up``: ``meshlet control`` plus dynamic sidecars.

The control plane serves the mesh file's directory (so editing a policy there is
pushed to every sidecar) with the mesh's CA; each sidecar starts with
``meshlet proxy --control`` and a single-use join token, makes its own key, and
gets its SVID and its snapshots from the control plane (docs/control.md). Its
port is picked up front like every other, so a restarted control plane comes
back where the sidecars look for it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

from meshlet.config.mesh import MeshConfig
from meshlet.errors import UpstreamError
from meshlet.mesh.plan import HOST, MeshPlan, ReplicaPlan
from meshlet.mesh.probe import http_get
from meshlet.mesh.supervisor import ProcessSpec, Supervised
from meshlet.mesh.waiting import until, wait_announced

START_TIMEOUT_S = 20.0
SYNC_TIMEOUT_S = 45.0  # the control plane's resync grace plus a held watch


class ControlPlane:
    def __init__(
        self,
        config: MeshConfig,
        *,
        argv: tuple[str, ...],
        port: int,
        on_event: Callable[[str], None],
    ) -> None:
        self.config = config
        self.url = f"https://{HOST}:{port}"
        env = {
            k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")
        }
        self.spec = ProcessSpec(
            name="control plane",
            argv=(
                *argv,
                "--config-dir",
                str(config.source.parent),
                "--ca-dir",
                str(self.ca_dir),
                "--listen",
                f"{HOST}:{port}",
                # Beside the sidecars' logs (static mode's layout); `meshlet audit
                # verify` checks it like theirs.
                *(
                    ("--audit", str(config.state_dir / "audit" / "control.jsonl"))
                    if config.audit
                    else ("--no-audit",)
                ),
            ),
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=config.state_dir,
            log_path=config.state_dir / "control.log",
            restart="always",
        )
        self._ready = asyncio.Event()
        self.process = Supervised(self.spec, on_line=self._line, on_event=on_event)

    @property
    def ca_dir(self) -> Path:
        return self.config.state_dir / "ca"

    def _line(self, text: str) -> None:
        if text.startswith("{") and '"ready"' in text:
            self._ready.set()

    async def start(self) -> None:
        """Start and wait for its ready line: it must answer before any sidecar asks
        it for an identity."""
        await self.process.spawn()
        await wait_announced(self.process, self._ready, START_TIMEOUT_S)

    def sidecar_argv(
        self, proxy_argv: tuple[str, ...], plan: ReplicaPlan, token: str
    ) -> tuple[str, ...]:
        """``meshlet proxy --control``: the token is spent within seconds of the
        start, and a restarted sidecar reuses the SVID in its state directory."""
        argv = [
            *proxy_argv,
            "--control",
            self.url,
            "--token",
            token,
            "--workload",
            plan.workload.name,
            "--bundle",
            str(self.ca_dir / "bundle.pem"),
            "--state-dir",
            str(plan.directory / "proxy"),
            "--outbound",
            f"{HOST}:{plan.outbound_port}",
            "--admin",
            f"{HOST}:0",
        ]
        if plan.inbound_port is not None:
            argv += ["--inbound", f"{HOST}:{plan.inbound_port}", "--app", f"{HOST}:{plan.app_port}"]
        for service, port in plan.tcp_ports:  # the ports MESHLET_TCP_<SERVICE> names
            argv += ["--tcp", f"{service}={HOST}:{port}"]
        if self.config.audit:  # where static mode writes it (bootstrap_for)
            argv += ["--audit", str(self.config.state_dir / "audit" / f"{plan.name}.jsonl")]
        else:
            argv += ["--no-audit"]
        return tuple(argv)


async def await_endpoints(plan: MeshPlan, admin: str, sidecar: Supervised) -> None:
    """A dynamic sidecar learns its peers from snapshots, which a fresh control plane
    holds back for a few seconds (its resync grace); an app started before then
    would get 502 for every service. So wait until the sidecar's /config_dump
    lists every endpoint of every service."""
    expected = {
        s.name: {f"{HOST}:{r.inbound_port}" for r in plan.of_service(s.name)}
        for s in plan.config.services
    }
    host, _, port = admin.rpartition(":")

    async def complete() -> bool:
        try:
            status, body = await http_get(host, int(port), "/config_dump", timeout_s=2.0)
            services = json.loads(body)["outbound"]["services"] if status == 200 else {}
        except (UpstreamError, ValueError, KeyError, TypeError):
            return False
        return all(
            {e.get("address") for e in services.get(name, {}).get("endpoints", [])} >= want
            for name, want in expected.items()
        )

    await until(
        complete, sidecar, SYNC_TIMEOUT_S, "its first complete snapshot from the control plane"
    )
