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
        "--audit",
        type=Path,
        metavar="FILE",
        help="hash-chained audit log of identity and config events "
        "(default: <ca-dir>/control/audit.jsonl)",
    )
    parser.add_argument("--no-audit", action="store_true", help="write no audit log")
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
    audit = None if args.no_audit else (args.audit or args.ca_dir / "control" / "audit.jsonl")
    return run_control(
        config_dir=args.config_dir, ca_dir=args.ca_dir, listen=listen, hold_s=args.hold, audit=audit
    )


# -- `meshlet proxy --control URL ...` (dynamic mode) ---------------------------------
# Kept here, with the control plane's CLI, so cli/proxy.py only needs a two-line hook.


def add_dynamic_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``meshlet proxy`` in dynamic mode (docs/control.md)."""
    group = parser.add_argument_group("dynamic mode (config and identity from the control plane)")
    group.add_argument("--control", metavar="URL", help="control plane, https://host:port")
    group.add_argument("--token", help="single-use join token (first start only)")
    group.add_argument("--workload", help="this sidecar's workload name in mesh.yaml")
    group.add_argument(
        "--bundle", type=Path, help="trust bundle PEM to verify the control plane on first start"
    )
    group.add_argument(
        "--state-dir",
        type=Path,
        help="private directory for the key, certificate and snapshots "
        "(default: ./.meshlet-proxy/<workload>)",
    )
    group.add_argument(
        "--inbound", default="127.0.0.1:15006", help="inbound listen address (default: %(default)s)"
    )
    group.add_argument(
        "--outbound",
        default="127.0.0.1:15001",
        help="outbound listen address (default: %(default)s)",
    )
    group.add_argument("--app", help="the app's address (default: 127.0.0.1:<mesh.yaml port>)")
    group.add_argument("--admin", help="admin listen address (default: none)")
    group.add_argument("--advertise", help="host to register instead of the bound inbound host")
    group.add_argument(
        "--tcp",
        action="append",
        default=[],
        metavar="SERVICE=HOST:PORT",
        help="local address of a protocol: tcp service (repeatable; default: port 0, announced)",
    )
    group.add_argument(
        "--audit",
        type=Path,
        metavar="FILE",
        help="hash-chained audit log of policy decisions (default: <state-dir>/audit.jsonl)",
    )
    group.add_argument("--no-audit", action="store_true", help="write no audit log")


def run_dynamic_proxy(args: argparse.Namespace) -> int:
    """``meshlet proxy --control ...``: build the settings and run the sidecar."""
    from meshlet.config.bootstrap import parse_address
    from meshlet.errors import ConfigError
    from meshlet.proxy.dynamic import run_dynamic
    from meshlet.proxy.dynamic_config import DynamicSettings

    if args.control is None:
        raise ConfigError("give --config FILE (static bootstrap) or --control URL (dynamic)")
    if args.config is not None:
        raise ConfigError("--config and --control are exclusive: pick static or dynamic mode")
    if not args.workload:
        raise ConfigError("--workload is required with --control")
    if not args.control.startswith("https://"):
        raise ConfigError(f"--control must be an https://host:port URL, got {args.control!r}")
    if args.workers != 1:
        raise ConfigError("--workers > 1 is not supported with --control")

    def address(flag: str, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse_address(value)
        except ValueError as exc:
            raise ConfigError(f"--{flag}: {exc}") from exc

    tcp: list[tuple[str, Any]] = []
    for item in args.tcp:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--tcp: expected SERVICE=HOST:PORT, got {item!r}")
        if any(n == name for n, _ in tcp):
            raise ConfigError(f"--tcp: service {name!r} given twice")
        tcp.append((name, address("tcp", value)))
    state_dir = args.state_dir or Path(".meshlet-proxy") / args.workload
    settings = DynamicSettings(
        control=args.control,
        workload=args.workload,
        token=args.token,
        state_dir=state_dir,
        bundle=args.bundle,
        inbound=address("inbound", args.inbound),
        outbound=address("outbound", args.outbound),
        app=address("app", args.app),
        admin=address("admin", args.admin),
        advertise=args.advertise,
        tcp=tuple(tcp),
        audit=None if args.no_audit else (args.audit or state_dir / "audit.jsonl"),
    )
    return run_dynamic(settings)
