"""``meshlet audit verify FILE...``: check an audit log's hash chain.

Files are checked in the order given (oldest first); with ``--rotated`` each
file's rotated siblings (``audit.log.2``, ``audit.log.1``) are checked before it.
Exit status: 0 intact, 1 broken (the first broken file and line are printed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from meshlet.cli.flags import show_usage


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    audit = subparsers.add_parser(
        "audit",
        help="audit log: verify the hash chain",
        description="Work with meshlet's hash-chained audit logs.",
    )
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    audit.set_defaults(handler=lambda _args: show_usage(audit))
    verify = sub.add_parser("verify", help="check the chain and name the first broken line")
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE", help="oldest first")
    verify.add_argument(
        "--rotated",
        action="store_true",
        help="include each file's rotated siblings (FILE.N ... FILE.1)",
    )
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(handler=_verify)


def _verify(args: argparse.Namespace) -> int:
    from meshlet.telemetry.audit import rotated_files, verify

    files: list[Path] = []
    for f in args.files:
        files.extend(rotated_files(f) if args.rotated else [f])
    result = verify(files)
    if args.json:
        print(
            json.dumps(
                {
                    "ok": result.ok,
                    "lines": result.lines,
                    "from_genesis": result.from_genesis,
                    "file": result.file,
                    "line": result.line,
                    "reason": result.reason,
                }
            )
        )
    elif result.ok:
        start = "from the first record" if result.from_genesis else "(starts mid-chain)"
        print(f"ok: {result.lines} record(s) in {len(files)} file(s), chain intact {start}")
    else:
        where = f"{result.file}:{result.line}" if result.line else result.file
        print(f"{where}: broken: {result.reason} ({result.lines} record(s) verified before it)")
    return 0 if result.ok else 1
