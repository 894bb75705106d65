"""``meshlet status``: live golden metrics per workload of a running local mesh.

It reads the state file ``meshlet up`` keeps (``<state_dir>/mesh.json``), scrapes
every sidecar's ``/stats/prometheus`` and shows, per workload, what happened in
the last window: request rate, success rate, p50/p99 latency and the share of
requests that came over mutual TLS, refreshed in place like ``linkerd viz stat``.
``--once`` prints one table (over one window) and exits, for scripts and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from meshlet.errors import UpstreamError
from meshlet.mesh.golden import Counts, Golden, counts_from, golden
from meshlet.mesh.probe import http_get
from meshlet.mesh.state import MeshState, ReplicaState, read_state

Scrape = dict[str, str | None]  # replica name -> metrics text (None: unreachable)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadRow:
    workload: str
    namespace: str
    direction: str  # "inbound" (served) or "outbound" (sent, client-only workloads)
    meshed: str  # "2/2": replicas whose sidecar answered the scrape
    total_requests: float
    window: Golden


async def _scrape_one(replica: ReplicaState) -> str | None:
    if replica.admin is None:
        return None
    host, _, port = replica.admin.rpartition(":")
    try:
        status, body = await http_get(host, int(port), "/stats/prometheus", timeout_s=2.0)
    except UpstreamError:
        return None
    return body.decode("utf-8", "replace") if status == 200 else None


async def scrape(state: MeshState) -> Scrape:
    texts = await asyncio.gather(*(_scrape_one(r) for r in state.replicas))
    return {r.name: t for r, t in zip(state.replicas, texts, strict=True)}


def rows(state: MeshState, before: Scrape, after: Scrape, window_s: float) -> list[WorkloadRow]:
    """One row per workload, in the order of the state file."""
    out: list[WorkloadRow] = []
    workloads: dict[str, list[ReplicaState]] = {}
    for r in state.replicas:
        workloads.setdefault(r.workload, []).append(r)
    for name, replicas in workloads.items():
        reporter = "destination" if replicas[0].service is not None else "source"
        window, total = Counts(), Counts()
        up = 0
        for r in replicas:
            now = after.get(r.name)
            if now is None:
                continue
            up += 1
            current = counts_from(now, reporter)
            total.add(current)
            then = before.get(r.name)
            window.add(current.minus(counts_from(then, reporter)) if then else current)
        out.append(
            WorkloadRow(
                workload=name,
                namespace=replicas[0].namespace,
                direction="inbound" if reporter == "destination" else "outbound",
                meshed=f"{up}/{len(replicas)}",
                total_requests=total.requests,
                window=golden(window, window_s),
            )
        )
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}ms"


def render(rows: list[WorkloadRow], window_s: float) -> Table:
    table = Table(title=f"meshlet status (last {window_s:.0f}s window)")
    for column in (
        "NAMESPACE",
        "WORKLOAD",
        "DIR",
        "MESHED",
        "SUCCESS",
        "DENIED",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P99",
        "MTLS",
        "TOTAL",
    ):
        table.add_column(
            column, justify="left" if column in ("NAMESPACE", "WORKLOAD", "DIR") else "right"
        )
    for row in rows:
        g = row.window
        table.add_row(
            row.namespace,
            row.workload,
            row.direction,
            row.meshed,
            _pct(g.success_rate),
            _pct(g.denied_share),
            f"{g.rate_per_s:.1f}",
            _ms(g.p50_ms),
            _ms(g.p99_ms),
            _pct(g.mtls_share),
            f"{row.total_requests:.0f}",
        )
    return table


def find_state_dir(target: Path | None) -> Path:
    """A state dir, a mesh.yaml (its state_dir), or by default ./.meshlet."""
    if target is None:
        return Path(".meshlet")
    if target.is_file():
        from meshlet.config.mesh import load_mesh

        return load_mesh(target).state_dir
    return target


async def run_status(
    target: Path | None, *, once: bool, window_s: float, console: Console | None = None
) -> int:
    # Not a terminal (a script, a test): wide enough that no column is cut.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    state_dir = find_state_dir(target)
    state = read_state(state_dir)
    before = await scrape(state)
    if once:
        await asyncio.sleep(window_s)
        console.print(render(rows(state, before, await scrape(state), window_s), window_s))
        return 0
    with (
        Live(
            render(rows(state, before, before, window_s), window_s),
            console=console,
            auto_refresh=False,
        ) as live,
        contextlib.suppress(asyncio.CancelledError),
    ):
        while True:
            await asyncio.sleep(window_s)
            state = read_state(state_dir)  # re-read: a restarted sidecar has a new admin port
            after = await scrape(state)
            live.update(render(rows(state, before, after, window_s), window_s), refresh=True)
            before = after
    return 0
