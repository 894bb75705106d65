"""``meshlet route explain``: which route a request takes, and what happens to it.

Argument parsing and printing only; the decision is ``meshlet.traffic.router``'s,
the same code the proxy runs. Exit status: 0 when a route (or the default route
of an unrouted host) applies, 1 when the host has routes and none matches,
2 for configuration errors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from meshlet.cli.flags import header_pairs, show_usage


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    route = subparsers.add_parser(
        "route",
        help="traffic routing: explain which route and backends a request gets",
        description="Inspect VirtualService / DestinationRule / HTTPRoute routing.",
    )
    sub = route.add_subparsers(dest="route_command", metavar="ACTION")
    route.set_defaults(handler=lambda _args: show_usage(route))
    explain = sub.add_parser("explain", help="show the route, backends, timeout and retries")
    explain.add_argument(
        "--routing",
        nargs="+",
        required=True,
        type=Path,
        metavar="PATH",
        help="routing YAML files or directories",
    )
    explain.add_argument("--host", required=True, help="destination host (Host header)")
    explain.add_argument("--method", default="GET", help="HTTP method (default: GET)")
    explain.add_argument("--path", default="/", help="request target, with query (default: /)")
    explain.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="K=V",
        help="a request header (repeatable)",
    )
    explain.add_argument(
        "--body-file", type=Path, help="request body; its JSON 'model' field is read"
    )
    explain.add_argument("--source-ip", default="", help="client address (consistent hashing)")
    explain.add_argument("--json", action="store_true", help="print JSON")
    explain.set_defaults(handler=_explain)


def _explain(args: argparse.Namespace) -> int:
    from meshlet.errors import ConfigError
    from meshlet.traffic.explain import explain
    from meshlet.traffic.loader import load_routing

    headers = dict(header_pairs(args.header))  # the last of a repeated name wins
    body: bytes | None = None
    if args.body_file is not None:
        try:
            body = args.body_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{args.body_file}: cannot read: {exc}") from exc
    report = explain(
        load_routing(args.routing),
        host=args.host,
        method=args.method,
        target=args.path,
        headers=headers,
        body=body,
        source_ip=args.source_ip,
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_text(report)
    return 0 if report["matched"] else 1


def _print_text(r: dict[str, Any]) -> None:
    if not r["matched"]:
        print(f"no route of {r['host']} matches {r['method']} {r['path']}")
        return
    print(
        f"route:    {r['route'] or '(default: host has no routing config)'}"
        + (f"  [{r['source']}]" if r["source"] else "")
    )
    if r["model"]:
        print(f"model:    {r['model']}")
    print("backends:")
    for b in r["backends"]:
        subset = f" subset={b['subset']}" if b["subset"] else ""
        port = f" port={b['port']}" if b["port"] else ""
        print(f"  - {b['host']}{subset}{port} weight={b['weight']}")
    timeout = "none" if r["timeout_ms"] is None else f"{r['timeout_ms']} ms"
    print(f"timeout:  {timeout} (stream idle {r['stream_idle_timeout_ms']} ms)")
    rt = r["retries"]
    per_try = "" if rt["per_try_timeout_ms"] is None else f", per try {rt['per_try_timeout_ms']} ms"
    print(f"retries:  {rt['attempts']} on {','.join(rt['retry_on']) or '-'}{per_try}")
    print(
        f"forward:  {r['rewritten_path']}"
        + (f" (authority {r['authority']})" if r["authority"] else "")
    )
    for key in ("mirrors", "fault", "max_request_body_bytes", "load_balancer", "inference"):
        if r.get(key):
            print(f"{key + ':':<9} {json.dumps(r[key])}")
