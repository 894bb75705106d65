"""``meshlet status``: live golden metrics of the mesh ``meshlet up`` runs (docs/mesh.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    status = subparsers.add_parser(
        "status",
        help="per-workload request rate, success rate, p50/p99 latency and mTLS share",
        description="Scrape every sidecar of the running local mesh and show golden metrics "
        "per workload, refreshed in place (like 'linkerd viz stat').",
    )
    status.add_argument(
        "target",
        type=Path,
        nargs="?",
        default=None,
        metavar="MESH",
        help="mesh.yaml or its state directory (default: ./.meshlet)",
    )
    status.add_argument(
        "--once", action="store_true", help="print one table over one window and exit (for scripts)"
    )
    status.add_argument(
        "--window",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="measurement window and refresh interval (default: 2)",
    )
    status.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    import asyncio

    from meshlet.errors import ConfigError
    from meshlet.mesh.status import run_status

    if args.window <= 0:
        raise ConfigError(f"--window: must be positive, got {args.window}")
    return asyncio.run(run_status(args.target, once=args.once, window_s=args.window))
