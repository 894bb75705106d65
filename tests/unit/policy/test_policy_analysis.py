"""Static security checks (meshlet analyze's engine), called directly."""

from __future__ import annotations

from policy_cases import docs, load, policy

from meshlet.policy.analysis import analyze_security
from meshlet.policy.scope import Workload

HTTPBIN = Workload(namespace="foo", labels={"app": "httpbin", "tier": "ml"})


def messages(text: str, workloads: list[Workload] | None) -> list[str]:
    return [str(f) for f in analyze_security(load(text), workloads, root_namespace="istio-system")]


def test_clean_config_has_no_findings() -> None:
    text = docs(
        policy("allow", "selector: {matchLabels: {app: httpbin}}\nrules: [{}]"),
        policy("pa", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: STRICT}",
               kind="PeerAuthentication"),
    )  # fmt: skip
    assert messages(text, [HTTPBIN]) == []


def test_two_workload_peer_authentications_selecting_one_workload() -> None:
    text = docs(
        policy("by-app", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: STRICT}",
               kind="PeerAuthentication"),
        policy("by-tier", "selector: {matchLabels: {tier: ml}}\nmtls: {mode: DISABLE}",
               kind="PeerAuthentication"),
    )  # fmt: skip
    (finding,) = messages(text, [HTTPBIN])
    assert "error: PeerAuthentications foo/by-app, foo/by-tier all select workload" in finding
    assert finding.startswith("policies.yaml:")
    assert messages(text, None) == []  # without workloads the overlap is unknowable


def test_deny_all_rule_makes_workload_unreachable() -> None:
    text = policy("block", "action: DENY\nrules: [{}]", namespace="istio-system")
    (finding,) = messages(text, [HTTPBIN])
    assert "istio-system/block: workload foo/app=httpbin,tier=ml is unreachable" in finding


def test_selector_in_root_namespace_matches_any_namespace() -> None:
    text = policy("root", "selector: {matchLabels: {app: httpbin}}\nrules: [{}]",
                  namespace="istio-system")  # fmt: skip
    assert messages(text, [HTTPBIN]) == []
    other = Workload(namespace="bar", labels={"app": "ratings"})
    (finding,) = messages(text, [other])
    assert "selector app=httpbin matches no known workload" in finding
