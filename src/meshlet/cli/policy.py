"""``meshlet policy explain``: what the authorization engine decides for a request, and why.

Argument parsing and printing only: the decision comes from the same compiled
engine the sidecar runs (``meshlet.policy``). Exit status 0 whatever the
decision (the decision is the output), 2 for configuration or argument errors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from meshlet.cli.flags import header_pairs, show_usage


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    policy = subparsers.add_parser(
        "policy",
        help="security policy: explain an authorization decision",
        description="Inspect PeerAuthentication / AuthorizationPolicy / RequestAuthentication.",
    )
    sub = policy.add_subparsers(dest="policy_command", metavar="ACTION")
    policy.set_defaults(handler=lambda _args: show_usage(policy))
    ex = sub.add_parser("explain", help="decide one request and show which policy and rule")
    ex.add_argument(
        "--policies",
        nargs="+",
        required=True,
        type=Path,
        metavar="PATH",
        help="security YAML files or directories",
    )
    ex.add_argument("--namespace", required=True, help="the destination workload's namespace")
    ex.add_argument("--labels", default="", metavar="K=V[,K=V]", help="its labels")
    ex.add_argument(
        "--root-namespace",
        default="istio-system",
        help="Istio's mesh-wide namespace (default: istio-system)",
    )
    ex.add_argument("--source-principal", help="peer identity (mTLS); omit for plaintext")
    ex.add_argument("--source-namespace", help="peer namespace (default: from the principal)")
    ex.add_argument("--source-ip", default="10.0.0.1", help="peer address (default: 10.0.0.1)")
    ex.add_argument("--destination-ip", default="10.0.0.2", help="workload address")
    ex.add_argument("--method", default="GET", help="HTTP method (default: GET)")
    ex.add_argument("--path", default="/", help="request path (default: /)")
    ex.add_argument("--host", default="", help="Host header")
    ex.add_argument("--port", type=int, default=80, help="the workload's port (default: 80)")
    ex.add_argument("--sni", help="TLS server name")
    ex.add_argument("--tcp", action="store_true", help="an opaque TCP connection, not HTTP")
    ex.add_argument(
        "--header", action="append", default=[], metavar="K=V", help="a request header (repeatable)"
    )
    ex.add_argument(
        "--jwt-claims", metavar="JSON", help="claims of a verified JWT (iss, sub, aud, azp, ...)"
    )
    ex.add_argument("--json", action="store_true", help="print JSON")
    ex.set_defaults(handler=_explain)


def _pairs(text: str, flag: str) -> dict[str, str]:
    from meshlet.errors import ConfigError

    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def build_request(args: argparse.Namespace) -> Any:
    """The RequestAttributes the flags describe."""
    from meshlet.errors import ConfigError
    from meshlet.policy.attributes import RequestAttributes, strip_spiffe

    headers: dict[str, tuple[str, ...]] = {}
    for key, value in header_pairs(args.header):
        headers[key] = (*headers.get(key, ()), value)
    claims: dict[str, Any] = {}
    if args.jwt_claims:
        try:
            claims = json.loads(args.jwt_claims)
        except ValueError as exc:
            raise ConfigError(f"--jwt-claims: not JSON: {exc}") from exc
        if not isinstance(claims, dict):
            raise ConfigError("--jwt-claims: expected a JSON object")
    aud = claims.get("aud")
    audiences = (
        (aud,) if isinstance(aud, str) else tuple(a for a in aud or () if isinstance(a, str))
    )
    principal = f"{claims.get('iss', '')}/{claims.get('sub', '')}" if claims else None
    return RequestAttributes(
        http=not args.tcp,
        method="" if args.tcp else args.method,
        path="" if args.tcp else args.path.split("?", 1)[0],
        host="" if args.tcp else args.host,
        headers=headers,
        source_principal=strip_spiffe(args.source_principal) if args.source_principal else None,
        namespace_override=args.source_namespace,
        source_ip=args.source_ip,
        destination_ip=args.destination_ip,
        destination_port=args.port,
        sni=args.sni,
        request_principal=principal,
        audiences=audiences,
        presenter=claims.get("azp") if isinstance(claims.get("azp"), str) else None,
        claims=claims,
    )


def explain(args: argparse.Namespace) -> dict[str, Any]:
    """The report ``--json`` prints."""
    from meshlet.config.istio_security import load_security_paths
    from meshlet.policy.scope import Workload, compile_workload

    config = load_security_paths([str(p) for p in args.policies])
    workload = Workload(namespace=args.namespace, labels=_pairs(args.labels, "--labels"))
    security = compile_workload(config, workload, root_namespace=args.root_namespace)
    request = build_request(args)
    decision = security.authorization.evaluate(request)
    custom = security.authorization.match_custom(request)
    where = {p.ref: p.where for p in security.authorization.policies}
    mtls = security.peers.resolve(args.port)
    return {
        "decision": decision.action.value,
        "policy": decision.policy,
        "rule": decision.rule,
        "audit": decision.audit,
        "audit_policy": decision.audit_policy,
        "reason": decision.reason,
        "source": where.get(decision.policy) if decision.policy else None,
        "custom": None
        if custom is None
        else {
            "provider": custom.provider,
            "policy": custom.policy,
            "rule": custom.rule,
        },
        "mtls": {"mode": mtls.mode.value, "policy": mtls.policy, "level": mtls.level},
        "applied_policies": [
            {"policy": p.ref, "action": p.action.value, "rules": len(p.rules), "source": p.where}
            for p in security.authorization.policies
        ],
    }


def _explain(args: argparse.Namespace) -> int:
    report = explain(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"decision: {report['decision']}")
    if report["policy"]:
        print(f"policy:   {report['policy']} rule {report['rule']}  [{report['source']}]")
    else:
        print("policy:   (none matched)")
    print(f"reason:   {report['reason']}")
    audit = f"yes ({report['audit_policy']})" if report["audit"] else "no"
    print(f"audit:    {audit}")
    if report["custom"]:
        c = report["custom"]
        print(
            f"custom:   CUSTOM policy {c['policy']} rule {c['rule']} would ask provider "
            f"{c['provider']!r} first (not contacted by explain)"
        )
    m = report["mtls"]
    print(f"mtls:     {m['mode']} ({m['policy'] or 'default'}, {m['level']} level)")
    print(f"applied:  {len(report['applied_policies'])} polic(ies)")
    for p in report["applied_policies"]:
        print(f"  - {p['policy']} {p['action']} rules={p['rules']}  [{p['source']}]")
    return 0
