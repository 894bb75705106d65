"""The `meshlet bench` load generator's own stalls, with its GC hygiene off and on.

Method: one echo (or SSE) upstream process; the load generator
(`python -m meshlet.bench.loadgen`, the one `meshlet bench` runs) at a constant
open-loop rate for `--seconds`, alternating `gc_hygiene` off and on for
`--rounds` rounds each, and no warm-up, so the measured window starts with the
first request, as `meshlet bench` did before it had one. Per setting, medians
across rounds of: collections per generation inside the window and the longest
collection pause (timed through `gc.callbacks`), the full collection that the
hygiene runs before the first request (0 when off), the longest send lag (how late
the generator's timer sent a request: its worst stall of any cause, including
waits for a CPU on a busy machine) and the latency p99.9 and maximum from
intended send time. Nothing here is a sidecar: this is the generator's floor.

    .venv/bin/python benchmarks/bench_loadgen.py [--rate 1000] [--seconds 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from meshlet.bench.histogram import Histogram
from meshlet.bench.loadgen import LoadSpec
from meshlet.bench.procs import python_module, read_ready_port, spawn, stop
from meshlet.bench.runner import run_loadgen

MS = 1e-6


def _figures(result: dict[str, Any]) -> dict[str, float]:
    lat = Histogram.from_dict(result["latency"]).summary(MS)
    lag = Histogram.from_dict(result["send_lag"]).summary(MS)
    gens = result["gc"]["collections"]
    return {
        "gen0": gens[0],
        "gen1": gens[1],
        "gen2": gens[2],
        "gc max ms": result["gc"]["max_pause_ms"],
        "set-up full gc ms": result["gc"]["setup_collect_ms"],
        "send lag max ms": lag["max"],
        "p99.9 ms": lat["p99_9"],
        "max ms": lat["max"],
        "errors": result["errors"],
    }


async def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-loadgen-"))
    child = await spawn(
        "upstream",
        python_module("meshlet.bench.upstreams", args.workload),
        logdir=workdir,
        stdout_pipe=True,
    )
    rows: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    try:
        port = await read_ready_port(child, timeout_s=60.0)
        for _ in range(args.rounds):
            for hygiene in (False, True):
                spec = LoadSpec(
                    port=port,
                    rate_per_s=args.rate,
                    duration_s=args.seconds,
                    connections=args.connections,
                    stream=args.workload == "stream",
                    gc_hygiene=hygiene,
                )
                rows[hygiene].append(_figures(await run_loadgen(spec)))
    finally:
        await stop(child)
    print(
        f"load generator alone, {args.workload} upstream, {args.rate:g} req/s x "
        f"{args.seconds:g} s, {args.connections} connections, {args.rounds} rounds per "
        f"setting, medians (min-max); load average {os.getloadavg()[0]:.1f}"
    )
    keys = list(rows[False][0])
    print("| gc hygiene | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for hygiene in (False, True):
        cells = []
        for key in keys:
            values = [r[key] for r in rows[hygiene]]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"| {'on' if hygiene else 'off'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workload", choices=["echo", "stream"], default="echo")
    asyncio.run(main(parser.parse_args()))
