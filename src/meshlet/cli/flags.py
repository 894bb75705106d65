"""Argument handling shared by several ``meshlet`` sub-commands.

Not a command module (it has no ``register``): only helpers, kept here so the
``--header`` syntax and the "no action given" exit status are the same
everywhere. ConfigError is imported lazily, like everything heavy in the CLI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["header_pairs", "show_usage"]


def show_usage(parser: argparse.ArgumentParser) -> int:
    """A command group run without an action: its help on stderr, exit 2 (usage)."""
    parser.print_help(sys.stderr)
    return 2


def header_pairs(items: Sequence[str]) -> list[tuple[str, str]]:
    """Repeated ``--header NAME=VALUE`` flags as (lowercase name, value), in order.
    The value is kept as given (it may contain ``=``); ConfigError when a flag
    has no ``=`` or no name."""
    from meshlet.errors import ConfigError

    pairs: list[tuple[str, str]] = []
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise ConfigError(f"--header {item!r}: expected NAME=VALUE")
        pairs.append((name.strip().lower(), value))
    return pairs
