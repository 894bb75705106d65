"""``meshlet ca``: create a CA, issue SVIDs and join tokens, inspect certificates.

Argument parsing only; the work is in ``meshlet.identity``. Other tools script
against these names, so they are a contract: ``init``, ``issue``, ``token``,
``inspect``, ``rotate-root`` (plus ``retire-roots`` to finish a rotation).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from meshlet.cli.flags import show_usage

DEFAULT_TRUST_DOMAIN = "cluster.local"  # Istio's and Kubernetes' default


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    ca = subparsers.add_parser(
        "ca",
        help="workload identity: create a CA, issue SVIDs and join tokens",
        description="Manage the mesh certificate authority (SPIFFE X.509-SVIDs).",
    )
    sub = ca.add_subparsers(dest="ca_command", metavar="ACTION")
    ca.set_defaults(handler=lambda _args: show_usage(ca))

    init = sub.add_parser("init", help="create a root and an issuer CA in a directory")
    init.add_argument("--dir", required=True, type=Path, help="CA directory to create")
    init.add_argument(
        "--trust-domain",
        default=DEFAULT_TRUST_DOMAIN,
        help=f"SPIFFE trust domain (default: {DEFAULT_TRUST_DOMAIN})",
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=_init)

    issue = sub.add_parser("issue", help="issue an X.509-SVID (key generated locally)")
    issue.add_argument("--dir", required=True, type=Path, help="CA directory")
    issue.add_argument(
        "--id", required=True, help="SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/web"
    )
    issue.add_argument(
        "--out", required=True, type=Path, help="writes cert.pem, key.pem, bundle.pem"
    )
    issue.add_argument("--ttl", default="24h", help="lifetime, e.g. 24h, 90m (default: 24h)")
    issue.set_defaults(handler=_issue)

    token = sub.add_parser("token", help="print a single-use join token for one SPIFFE ID")
    token.add_argument("--dir", required=True, type=Path, help="CA directory")
    token.add_argument("--id", required=True, help="the SPIFFE ID the token proves")
    token.add_argument("--ttl", default="10m", help="validity, e.g. 10m (default: 10m)")
    token.set_defaults(handler=_token)

    inspect = sub.add_parser("inspect", help="summarize a certificate and check its chain")
    inspect.add_argument("file", type=Path, metavar="FILE", help="PEM certificate (chain)")
    inspect.add_argument(
        "--bundle", type=Path, help="trust bundle PEM (default: bundle.pem beside FILE, if any)"
    )
    inspect.set_defaults(handler=_inspect)

    rotate = sub.add_parser("rotate-root", help="add a new root beside the old one")
    rotate.add_argument("--dir", required=True, type=Path, help="CA directory")
    rotate.set_defaults(handler=_rotate_root)

    retire = sub.add_parser(
        "retire-roots", help="drop every root but the current one (after a rotation)"
    )
    retire.add_argument("--dir", required=True, type=Path, help="CA directory")
    retire.set_defaults(handler=_retire_roots)


def _now() -> float:
    from meshlet.clock import MonotonicClock

    return MonotonicClock().wall()


def _ttl(text: str, flag: str = "--ttl") -> float:
    from meshlet.config.durations import parse_duration
    from meshlet.errors import ConfigError

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def _read(path: Path) -> bytes:
    from meshlet.errors import ConfigError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None


def _init(args: argparse.Namespace) -> int:
    from meshlet.identity.ca import CertificateAuthority
    from meshlet.identity.svid import key_id

    ca = CertificateAuthority.init(args.dir, args.trust_domain, now=_now(), force=args.force)
    print(f"created CA for trust domain {ca.trust_domain} in {args.dir}")
    print(f"root key id: {key_id(ca.roots[-1])}")
    print(f"trust bundle: {args.dir / 'bundle.pem'}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from meshlet.identity.ca import CertificateAuthority
    from meshlet.identity.spiffeid import SpiffeId

    spiffe_id = SpiffeId.parse(args.id)
    ttl_s = _ttl(args.ttl)
    ca = CertificateAuthority.load(args.dir)
    issued = ca.issue(spiffe_id, now=_now(), ttl_s=ttl_s)
    issued.write(args.out)
    print(f"issued {spiffe_id} valid until {_iso(issued.not_after)}")
    print(f"wrote {args.out / 'cert.pem'}, {args.out / 'key.pem'}, {args.out / 'bundle.pem'}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from meshlet.identity.ca import CertificateAuthority
    from meshlet.identity.spiffeid import SpiffeId

    spiffe_id = SpiffeId.parse(args.id)
    ttl_s = _ttl(args.ttl)
    ca = CertificateAuthority.load(args.dir)
    print(ca.issue_join_token(spiffe_id, now=_now(), ttl_s=ttl_s))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from meshlet.identity.inspect import summarize

    bundle_path: Path | None = args.bundle
    if bundle_path is None:
        sibling = args.file.parent / "bundle.pem"
        if sibling.exists() and sibling.resolve() != args.file.resolve():
            bundle_path = sibling
    bundle_pem = _read(bundle_path) if bundle_path is not None else None
    now = _now()
    summary = summarize(_read(args.file), bundle_pem=bundle_pem, now=now)
    print(f"{'file:':<12} {args.file}")
    if bundle_path is not None:
        print(f"{'bundle file:':<12} {bundle_path}")
    for line in summary.lines(now=now):
        print(line)
    return 1 if summary.chains_to_bundle is False else 0


def _rotate_root(args: argparse.Namespace) -> int:
    from meshlet.identity.ca import CertificateAuthority
    from meshlet.identity.svid import key_id

    ca = CertificateAuthority.load(args.dir).rotate_root(now=_now())
    print(f"added root {key_id(ca.roots[-1])}; the bundle now holds {len(ca.roots)} roots")
    print("new SVIDs chain to the new root; old ones stay valid until they expire")
    return 0


def _retire_roots(args: argparse.Namespace) -> int:
    from meshlet.identity.ca import CertificateAuthority

    before = CertificateAuthority.load(args.dir)
    dropped = len(before.roots) - 1
    before.retire_roots()
    print(f"dropped {dropped} old root(s); SVIDs that chain to them no longer verify")
    return 0


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
