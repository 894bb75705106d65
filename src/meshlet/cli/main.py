"""Entry point of the ``meshlet`` command.

Each sub-command lives in its own module under ``meshlet.cli`` and exposes
``register(subparsers)``; its handler imports the library it needs lazily, so
``meshlet proxy`` starts without importing the benchmark suite or matplotlib.

User mistakes (``MeshError``) print one line per problem to stderr and exit 2;
anything else is our bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from meshlet import __version__
from meshlet.errors import MeshError

# One line per sub-command module; the order is the order of ``meshlet --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "meshlet.cli.ca",
    "meshlet.cli.proxy",
    "meshlet.cli.policy",
    "meshlet.cli.route",
    "meshlet.cli.analyze",
    "meshlet.cli.audit",
    "meshlet.cli.control",
    "meshlet.cli.up",
    "meshlet.cli.status",
    "meshlet.cli.bench",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshlet",
        description="A service mesh for AI inference workloads.",
    )
    parser.add_argument("--version", action="version", version=f"meshlet {__version__}")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging threshold for meshlet's own logs (default: WARNING)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    import logging

    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return handler(args)
    except MeshError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"meshlet: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
