"""A deliberately plain authorization evaluator, the oracle for the compiled one.

It walks every policy and rule in order and compares values directly, sharing
no matcher or index code with ``engine``: the property tests check that both
agree on random policies and requests, so a bug in the compiled fast path shows
up as a disagreement. Not used on the request path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from meshlet.config.istio_security import (
    Action,
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
)
from meshlet.policy.attributes import (
    Decision,
    RequestAttributes,
    Verdict,
    strip_port,
    strip_spiffe,
)


def _pattern(pattern: str, value: str | None, fold: bool = False) -> bool:
    if value is None:
        return False
    if fold:
        pattern, value = pattern.lower(), value.lower()
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _in_cidr(cidr: str, value: str | None) -> bool:
    if value is None:
        return False
    try:
        return ipaddress.ip_address(value) in ipaddress.ip_network(cidr, strict=False)
    except (ValueError, TypeError):
        return False


def _field_ok(
    yes: Sequence[str],
    no: Sequence[str],
    value: str | None,
    *,
    ip: bool = False,
    fold: bool = False,
) -> bool:
    def hit(p: str) -> bool:
        return _in_cidr(p, value) if ip else _pattern(p, value, fold)

    if yes and not any(hit(p) for p in yes):
        return False
    return not any(hit(p) for p in no)


def _source_ok(s: Source, r: RequestAttributes) -> bool:
    principal = r.source_principal
    return (
        _field_ok(
            [strip_spiffe(p) for p in s.principals],
            [strip_spiffe(p) for p in s.not_principals],
            principal,
        )
        and (
            not r.http
            or _field_ok(s.request_principals, s.not_request_principals, r.request_principal)
        )
        and _field_ok(s.namespaces, s.not_namespaces, r.source_namespace)
        and _field_ok(s.ip_blocks, s.not_ip_blocks, r.source_ip, ip=True)
        and _field_ok(
            s.remote_ip_blocks, s.not_remote_ip_blocks, r.remote_ip or r.source_ip, ip=True
        )
    )


def _operation_ok(o: Operation, r: RequestAttributes) -> bool:
    if o.ports and r.destination_port not in o.ports:
        return False
    if r.destination_port in o.not_ports:
        return False
    if not r.http:
        return True
    return (
        _field_ok(
            [strip_port(h) for h in o.hosts],
            [strip_port(h) for h in o.not_hosts],
            strip_port(r.host),
            fold=True,
        )
        and _field_ok(o.methods, o.not_methods, r.method)
        and _field_ok(o.paths, o.not_paths, r.path)
    )


def _condition_values(key: str, r: RequestAttributes) -> list[str]:
    if key.startswith("request.headers["):
        return list(r.headers.get(key[16:-1].lower(), ()))
    if key.startswith("request.auth.claims["):
        value: object = r.claims
        for name in key[20:-1].split("]["):
            value = value.get(name) if isinstance(value, dict) else None
        if isinstance(value, str):
            return [value]
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []
    single = {
        "source.ip": r.source_ip,
        "remote.ip": r.remote_ip or r.source_ip,
        "source.namespace": r.source_namespace,
        "source.principal": r.source_principal,
        "request.auth.principal": r.request_principal,
        "request.auth.presenter": r.presenter,
        "destination.ip": r.destination_ip,
        "destination.port": str(r.destination_port),
        "connection.sni": r.sni,
    }
    if key == "request.auth.audiences":
        return list(r.audiences)
    value_ = single[key]
    return [value_] if value_ is not None else []


def _condition_ok(c: Condition, r: RequestAttributes) -> bool:
    if c.key.startswith("request.") and not r.http:
        return True  # only reached for non-ALLOW rules: HTTP-only parts are ignored
    ip = c.key in ("source.ip", "remote.ip", "destination.ip")
    values = _condition_values(c.key, r)

    def hit(p: str, v: str) -> bool:
        if ip:
            return _in_cidr(p, v)
        if c.key == "destination.port":
            return int(p) == int(v)
        return _pattern(p, v)

    if c.values and not any(hit(p, v) for p in c.values for v in values):
        return False
    return not any(hit(p, v) for p in c.not_values for v in values)


def _uses_http(rule: Rule) -> bool:
    for s in rule.sources:
        if s.request_principals or s.not_request_principals:
            return True
    for o in rule.operations:
        if o.hosts or o.not_hosts or o.methods or o.not_methods or o.paths or o.not_paths:
            return True
    return any(c.key.startswith("request.") for c in rule.conditions)


def rule_matches(rule: Rule, action: Action, r: RequestAttributes) -> bool:
    if not r.http and action is Action.ALLOW and _uses_http(rule):
        return False
    if rule.sources and not any(_source_ok(s, r) for s in rule.sources):
        return False
    if rule.operations and not any(_operation_ok(o, r) for o in rule.operations):
        return False
    return all(_condition_ok(c, r) for c in rule.conditions)


def first_match(
    policies: Sequence[AuthorizationPolicy], action: Action, r: RequestAttributes
) -> tuple[str, int] | None:
    for policy in policies:
        if policy.action is not action:
            continue
        for i, rule in enumerate(policy.rules):
            if rule_matches(rule, action, r):
                return policy.ref, i
    return None


def reference_evaluate(policies: Sequence[AuthorizationPolicy], r: RequestAttributes) -> Decision:
    """DENY, then ALLOW, plus AUDIT, walking everything."""
    audit = first_match(policies, Action.AUDIT, r)
    deny = first_match(policies, Action.DENY, r)
    if deny is not None:
        action, (policy, rule) = Verdict.DENY, deny
        reason = f"denied by DENY policy {policy} rule {rule}"
        return Decision(
            action=action,
            policy=policy,
            rule=rule,
            audit=audit is not None,
            reason=reason,
            audit_policy=audit[0] if audit else None,
        )
    if not any(p.action is Action.ALLOW for p in policies):
        return Decision(
            action=Verdict.ALLOW,
            policy=None,
            rule=None,
            audit=audit is not None,
            reason="allowed: no ALLOW policy applies to this workload",
            audit_policy=audit[0] if audit else None,
        )
    allow = first_match(policies, Action.ALLOW, r)
    if allow is None:
        return Decision(
            action=Verdict.DENY,
            policy=None,
            rule=None,
            audit=audit is not None,
            reason="denied: ALLOW policies apply but none matched",
            audit_policy=audit[0] if audit else None,
        )
    return Decision(
        action=Verdict.ALLOW,
        policy=allow[0],
        rule=allow[1],
        audit=audit is not None,
        reason=f"allowed by ALLOW policy {allow[0]} rule {allow[1]}",
        audit_policy=audit[0] if audit else None,
    )
