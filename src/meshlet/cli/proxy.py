"""``meshlet proxy``: run the sidecar from a static bootstrap file.

Argument parsing only; the work is in ``meshlet.proxy.runner`` (imported inside
the handler so ``meshlet --help`` does not load uvloop, ssl or pydantic).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "proxy",
        help="run the sidecar proxy (mTLS, HTTP/1.1 and TCP) from a bootstrap file",
        description="Run the meshlet sidecar. See docs/proxy.md for the bootstrap keys.",
    )
    parser.add_argument("--config", help="bootstrap YAML file (proxy.yaml); or use --control")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the listening ports with SO_REUSEPORT (default: 1)",
    )
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default=argparse.SUPPRESS,  # keep the global --log-level unless given here
        help="logging threshold (same as the global --log-level)",
    )
    from meshlet.cli.control import add_dynamic_arguments  # dynamic mode (docs/control.md)

    add_dynamic_arguments(parser)
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    logging.getLogger().setLevel(args.log_level)
    if args.workers < 1:
        from meshlet.errors import ConfigError

        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if args.control is not None or args.config is None:
        from meshlet.cli.control import run_dynamic_proxy

        return run_dynamic_proxy(args)  # says what is missing when neither is given
    from meshlet.proxy.runner import run_proxy

    return run_proxy(args.config, workers=args.workers)
