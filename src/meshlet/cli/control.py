"""``meshlet control``: run the control plane (CA, config store, snapshot push).

Argument parsing only; the work is in ``meshlet.control`` (imported inside the
handler so ``meshlet --help`` stays fast).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "control",
        help="run the control plane: SVIDs for sidecars, config push, registry",
        description="Run the meshlet control plane. See docs/control.md.",
    )
    parser.add_argument(
        "--config-dir",
        required=True,
        type=Path,
        help="directory with mesh.yaml and Istio / Gateway API YAML (watched for changes)",
    )
    parser.add_argument(
        "--ca-dir", required=True, type=Path, help="CA directory made by 'meshlet ca init'"
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:15012",  # istiod's xDS-over-TLS port
        help="HTTPS address to serve on (default: 127.0.0.1:15012; port 0 picks one)",
    )
    parser.add_argument(
        "--hold",
        type=float,
        default=None,
        help="seconds a watch is held before an empty answer (default: 15)",
    )
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=argparse.SUPPRESS,  # keep the global --log-level unless given here
        help="logging threshold (same as the global --log-level)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(args.log_level)
    from meshlet.config.bootstrap import parse_address
    from meshlet.control.runner import run_control
    from meshlet.errors import ConfigError

    try:
        listen = parse_address(args.listen)
    except ValueError as exc:
        raise ConfigError(f"--listen: {exc}") from exc
    if args.hold is not None and args.hold <= 0:
        raise ConfigError(f"--hold must be positive, got {args.hold}")
    return run_control(
        config_dir=args.config_dir, ca_dir=args.ca_dir, listen=listen, hold_s=args.hold
    )
