"""``meshlet up mesh.yaml``: start a mesh, show what runs where, stop on Ctrl-C/SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from meshlet.config.mesh import load_mesh
from meshlet.mesh.runner import MeshRunner


def replicas_table(runner: MeshRunner) -> Table:
    """Services, endpoints and SPIFFE IDs, one row per replica."""
    table = Table(
        title=f"meshlet: {runner.config.source} (trust domain {runner.config.trust_domain})"
    )
    for column in ("service", "replica", "SPIFFE ID", "app", "inbound (mTLS)", "outbound", "admin"):
        table.add_column(column, no_wrap=column != "SPIFFE ID")
    for r in runner.replicas:
        p = r.plan
        table.add_row(
            p.service or "(client)",
            p.name,
            p.spiffe_id,
            f"127.0.0.1:{p.app_port}" if p.app_port else "-",
            f"127.0.0.1:{p.inbound_port} {p.workload.mtls}" if p.inbound_port else "-",
            f"127.0.0.1:{p.outbound_port}",
            r.admin or "-",
        )
    return table


def inactive_features(runner: MeshRunner) -> list[str]:
    """What mesh.yaml asks for that this build's sidecar cannot do yet."""
    out = []
    if runner.config.policies and not runner.features.policies:
        out.append(
            "policies: authorization is not in this build's sidecar; the files were "
            "checked but not loaded, so no request is denied"
        )
    if runner.config.routing and not runner.features.routing:
        out.append(
            "routing: VirtualService/DestinationRule (splits, header matches, retries, "
            "outlier detection) are not in this build's sidecar; the files were checked "
            "but not loaded, so requests spread over every endpoint of a service"
        )
    return out


async def run_up(path: Path, *, console: Console | None = None, control_plane: bool = False) -> int:
    # Not a terminal (a log, a test): wide enough that addresses are never cut.
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    errors = Console(stderr=True)
    config = load_mesh(path)  # every problem at once, nothing started
    if control_plane:
        config = dataclasses.replace(config, control_plane=True)
    runner = MeshRunner(
        config, on_event=lambda msg: errors.print(f"[yellow]meshlet:[/] {msg}", highlight=False)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console.print(f"meshlet: starting {len(config.workloads)} workloads from {path} ...")
    start = asyncio.create_task(runner.start())
    waiter = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({start, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if start not in done:  # Ctrl-C while starting: start() cleans up when cancelled
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
        return 130
    waiter.cancel()
    start.result()
    console.print(replicas_table(runner))
    if runner.control_url:
        console.print(
            f"meshlet: control plane at {runner.control_url} serving "
            f"{config.source.parent} (edits there are pushed live)",
            highlight=False,
        )
    for line in inactive_features(runner):
        errors.print(f"[yellow]meshlet: not active:[/] {line}", highlight=False)
    console.print(
        f"meshlet: mesh is up; state in {config.state_dir}; 'meshlet status' shows "
        "live metrics; Ctrl-C stops everything",
        highlight=False,
    )
    await stop.wait()
    console.print("meshlet: stopping ...")
    await runner.stop()
    console.print("meshlet: stopped")
    return 0
