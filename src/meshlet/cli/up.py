"""``meshlet up mesh.yaml``: run a whole mesh on this machine (see docs/mesh.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    up = subparsers.add_parser(
        "up",
        help="run a local mesh from mesh.yaml: CA, sidecars, workloads, supervised",
        description="Start every workload of mesh.yaml with its own mTLS sidecar, print a "
        "table of services, endpoints and SPIFFE IDs, and supervise them until Ctrl-C.",
    )
    up.add_argument(
        "mesh",
        type=Path,
        nargs="?",
        default=Path("mesh.yaml"),
        help="the mesh file (default: ./mesh.yaml)",
    )
    up.add_argument(
        "--control-plane",
        action="store_true",
        help="also run 'meshlet control' on the mesh directory and start the "
        "sidecars in dynamic mode (config changes pushed live); same as "
        "'control_plane: true' in mesh.yaml",
    )
    up.set_defaults(handler=_up)


def _up(args: argparse.Namespace) -> int:
    import asyncio

    from meshlet.mesh.up import run_up

    return asyncio.run(run_up(args.mesh, control_plane=args.control_plane))
