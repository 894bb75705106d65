"""``meshlet bench``: side-by-side benchmarks of direct, meshlet, Envoy and HAProxy.

Argument parsing only; the suite lives in ``meshlet.bench`` and is imported when
the command runs, so other commands never pay for it (or for matplotlib).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark meshlet against direct, Envoy and HAProxy on this machine",
        description=(
            "Start each topology, load it open-loop (latency from intended send time), "
            "and write DIR/results.json, DIR/report.md and PNG plots."
        ),
    )
    p.add_argument(
        "--topologies",
        default="direct,meshlet,envoy,haproxy",
        help="comma-separated: direct, meshlet, envoy, haproxy (default: all; direct always runs)",
    )
    p.add_argument("--workload", default="echo", choices=["echo", "inference", "stream"])
    p.add_argument(
        "--rate", type=float, default=1000.0, help="open-loop requests per second (1000)"
    )
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load per run (30)")
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="seconds of load at the same rate before each measured run, not recorded "
        "(2; --quick: at most 0.5; 0: none)",
    )
    p.add_argument(
        "--cold-requests",
        type=int,
        default=200,
        help="the first N requests after start-up, reported apart as the cold start (200)",
    )
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections (16)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions of every topology (3)")
    p.add_argument(
        "--workers",
        default="1,2",
        help="worker counts: meshlet --workers, Envoy --concurrency, HAProxy nbthread (1,2)",
    )
    p.add_argument("--p99-bound-ms", type=float, default=50.0, help="p99 bound for max throughput")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory")
    p.add_argument(
        "--quick", action="store_true", help="a smoke run that finishes in under a minute"
    )
    p.add_argument("--no-library", action="store_true", help="skip the library-level figures")
    p.set_defaults(handler=run)


def _positive(name: str, value: float) -> None:
    from meshlet.errors import ConfigError

    if not value > 0:
        raise ConfigError(f"--{name}: must be > 0, got {value}")


def _at_least_zero(name: str, value: float) -> None:
    from meshlet.errors import ConfigError

    if not 0 <= value < float("inf"):
        raise ConfigError(f"--{name}: must be >= 0 and finite, got {value}")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from rich.progress import Progress

    from meshlet.bench.plots import write_plots
    from meshlet.bench.report import build_report
    from meshlet.bench.runner import BenchOptions, plan, run_bench
    from meshlet.errors import ConfigError

    for name in ("rate", "duration", "connections", "repeat", "p99_bound_ms"):
        _positive(name.replace("_", "-"), getattr(args, name))
    _at_least_zero("warmup", args.warmup)
    _at_least_zero("cold-requests", args.cold_requests)
    try:
        workers = tuple(int(w) for w in args.workers.split(",") if w.strip())
    except ValueError:
        raise ConfigError(f"--workers: expected numbers like 1,2, got {args.workers!r}") from None
    opts = BenchOptions(
        out=args.out,
        topologies=tuple(t.strip() for t in args.topologies.split(",") if t.strip()),
        workload=args.workload,
        rate_per_s=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        cold_requests=args.cold_requests,
        connections=args.connections,
        repeat=args.repeat,
        workers=workers or (1,),
        p99_bound_ms=args.p99_bound_ms,
        library=not args.no_library,
    )
    if args.quick:
        opts = opts.quickened()
    args.out.mkdir(parents=True, exist_ok=True)
    steps, skipped = plan(opts)
    for skip in skipped:
        print(f"meshlet bench: skipping {skip['what']}: {skip['reason']}", file=sys.stderr)
    with Progress(transient=False) as progress:
        task = progress.add_task("starting", total=len(steps) + 1 + int(opts.library))

        def advance(text: str) -> None:
            progress.update(task, description=text, advance=0 if text == "starting" else 1)

        results = asyncio.run(run_bench(opts, advance))
    command = "meshlet bench " + shlex.join(
        sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]
    )
    results["command"] = command
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "report.md").write_text(build_report(results, command=command))
    plots = write_plots(results, args.out)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'report.md'} and {len(plots)} plots")
    for fail in results["failures"]:
        print(f"meshlet bench: {fail['topology']} failed: {fail['reason']}", file=sys.stderr)
    return 1 if results["failures"] else 0
