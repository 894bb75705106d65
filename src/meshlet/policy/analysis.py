"""Static checks over security resources, for ``meshlet analyze``.

Loading already refuses what meshlet cannot enforce; these checks find
configurations that load but are probably not what the author meant:

* a selector that matches no known workload (warning: the policy does nothing);
* a workload no request can reach: a DENY rule that matches everything, or
  ALLOW policies none of which has a rule (warning: "allow-nothing" is a
  legitimate lockdown, but it should be deliberate);
* PeerAuthentications that conflict: two namespace-wide (or two mesh-wide)
  ones in one namespace, or two workload ones selecting the same workload
  (error: Istio then picks the oldest, which nobody reviews);
* a CUSTOM policy naming a provider that no ExtensionProvider declares (error:
  the sidecar refuses to start with it).

Workloads are known from a mesh.yaml when one is given; otherwise each distinct
selector (and each namespace) stands in for one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from meshlet.config.istio_common import selector_matches
from meshlet.config.istio_security import (
    Action,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    Rule,
    SecurityConfig,
)
from meshlet.policy.scope import Workload, authorization_for, peer_scopes_for

Resource = AuthorizationPolicy | PeerAuthentication | RequestAuthentication


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    severity: str  # "error" or "warning"
    where: str  # file:line
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.severity}: {self.message}"


def _is_catch_all(rule: Rule) -> bool:
    return not rule.sources and not rule.operations and not rule.conditions


def _stand_in_workloads(config: SecurityConfig, root_namespace: str) -> list[Workload]:
    """Without a mesh.yaml: one workload per namespace and per selector."""
    seen: dict[tuple[str, tuple[tuple[str, str], ...]], Workload] = {}
    resources: list[Resource] = [
        *config.authorization_policies,
        *config.peer_authentications,
        *config.request_authentications,
    ]
    for r in resources:
        if r.namespace == root_namespace:
            continue
        key = (r.namespace, r.selector or ())
        seen.setdefault(key, Workload(namespace=r.namespace, labels=dict(r.selector or ())))
    return list(seen.values())


def analyze_security(
    config: SecurityConfig, workloads: Sequence[Workload] | None, *, root_namespace: str
) -> list[Finding]:
    """Every finding, in a stable order (errors are not fatal to later checks)."""
    findings: list[Finding] = []
    known = list(workloads) if workloads is not None else None
    if known is not None:
        findings += _unmatched_selectors(config, known, root_namespace)
    candidates = known if known is not None else _stand_in_workloads(config, root_namespace)
    findings += _unreachable(config, candidates, root_namespace)
    findings += _peer_conflicts(config, known, root_namespace)
    providers = {p.name for p in config.providers}
    for policy in config.authorization_policies:
        if policy.action is Action.CUSTOM and policy.provider not in providers:
            findings.append(
                Finding(
                    severity="error",
                    where=policy.where,
                    message=f"AuthorizationPolicy {policy.ref}: CUSTOM provider "
                    f"{policy.provider!r} is not declared by any meshlet.dev/v1alpha1 "
                    "ExtensionProvider",
                )
            )
    return findings


def _unmatched_selectors(
    config: SecurityConfig, workloads: Sequence[Workload], root: str
) -> list[Finding]:
    out = []
    resources: list[tuple[str, Resource]] = [
        *(("AuthorizationPolicy", r) for r in config.authorization_policies),
        *(("PeerAuthentication", r) for r in config.peer_authentications),
        *(("RequestAuthentication", r) for r in config.request_authentications),
    ]
    for kind, r in resources:
        if r.selector is None:
            continue
        in_scope = [w for w in workloads if r.namespace in (w.namespace, root)]
        if kind == "PeerAuthentication":
            in_scope = [w for w in workloads if w.namespace == r.namespace]
        if not any(selector_matches(r.selector, w.labels) for w in in_scope):
            labels = ",".join(f"{k}={v}" for k, v in r.selector)
            out.append(
                Finding(
                    severity="warning",
                    where=r.where,
                    message=f"{kind} {r.ref}: selector {labels} matches no known workload",
                )
            )
    return out


def _describe(w: Workload) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(w.labels.items()))
    return f"{w.namespace}/{labels or '*'}"


def _unreachable(config: SecurityConfig, workloads: Sequence[Workload], root: str) -> list[Finding]:
    out = []
    reported: set[tuple[str, str]] = set()
    for w in workloads:
        policies = authorization_for(config.authorization_policies, w, root_namespace=root)
        deny_all = next(
            (p for p in policies if p.action is Action.DENY and any(map(_is_catch_all, p.rules))),
            None,
        )
        allows = [p for p in policies if p.action is Action.ALLOW]
        culprit, why = None, ""
        if deny_all is not None:
            culprit, why = deny_all, "its DENY rule {} matches every request"
        elif allows and not any(p.rules for p in allows):
            culprit = allows[0]
            why = "ALLOW policies apply but none has a rule, so nothing is allowed"
        if culprit is None or (culprit.ref, _describe(w)) in reported:
            continue
        reported.add((culprit.ref, _describe(w)))
        out.append(
            Finding(
                severity="warning",
                where=culprit.where,
                message=f"AuthorizationPolicy {culprit.ref}: workload {_describe(w)} "
                f"is unreachable: {why}",
            )
        )
    return out


def _peer_conflicts(
    config: SecurityConfig, workloads: Sequence[Workload] | None, root: str
) -> list[Finding]:
    out = []
    by_scope: dict[tuple[str, tuple[tuple[str, str], ...] | None], list[str]] = defaultdict(list)
    where: dict[str, str] = {}
    for p in config.peer_authentications:
        by_scope[(p.namespace, p.selector)].append(p.ref)
        where[p.ref] = p.where
    for (namespace, selector), refs in by_scope.items():
        if len(refs) > 1:
            scope = (
                "mesh-wide"
                if namespace == root and selector is None
                else ("namespace-wide" if selector is None else "workload")
            )
            out.append(
                Finding(
                    severity="error",
                    where=where[refs[1]],
                    message=f"PeerAuthentications {', '.join(refs)} are all {scope} in namespace "
                    f"{namespace!r} with the same selector; only the oldest applies",
                )
            )
    for w in workloads or ():
        scopes = peer_scopes_for(config.peer_authentications, w, root_namespace=root)
        if scopes.workload is not None and scopes.workload_conflicts:
            others = [
                p for p in scopes.workload_conflicts if p.selector != scopes.workload.selector
            ]
            if others:
                names = ", ".join(p.ref for p in [scopes.workload, *others])
                out.append(
                    Finding(
                        severity="error",
                        where=others[0].where,
                        message=f"PeerAuthentications {names} all select workload {_describe(w)}; "
                        f"only the oldest ({scopes.workload.ref}) applies",
                    )
                )
    return out
