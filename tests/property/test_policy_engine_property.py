"""The compiled, indexed engine and the plain reference evaluator agree on
random policies and requests (STYLE.md §7)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshlet.config.istio_security import (
    Action,
    AuthorizationPolicy,
    Condition,
    Operation,
    Rule,
    Source,
)
from meshlet.policy.attributes import RequestAttributes
from meshlet.policy.engine import CompiledPolicies
from meshlet.policy.reference import first_match, reference_evaluate

# Small pools so random policies and requests actually hit each other.
PRINCIPALS = ["cluster.local/ns/foo/sa/a", "cluster.local/ns/bar/sa/b", "td/ns/foo/sa/c"]
NAMESPACES = ["foo", "bar", "baz"]
METHODS = ["GET", "POST", "DELETE"]
PATHS = ["/", "/v1/models/a", "/v1/models/b:predict", "/admin/x", "/health"]
HOSTS = ["svc.foo", "API.example.com", "x.example.com"]
PORTS = [8000, 9000, 9001]
IPS = ["10.0.0.1", "10.0.1.5", "192.168.1.1", "::1"]
CIDRS = ["10.0.0.0/24", "10.0.0.0/8", "192.168.1.1", "::/0", "2001:db8::/32"]
ISSUER_PRINCIPALS = ["iss-a/alice", "iss-b/bob"]


def patterns(values: list[str]) -> st.SearchStrategy[tuple[str, ...]]:
    def wild(v: str) -> st.SearchStrategy[str]:
        return st.sampled_from([v, v[: max(1, len(v) // 2)] + "*", "*" + v[len(v) // 2 :], "*"])

    return st.lists(st.sampled_from(values).flatmap(wild), max_size=2).map(tuple)


def ports() -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.sampled_from(PORTS), max_size=2).map(tuple)


def cidrs() -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(CIDRS), max_size=2).map(tuple)


SOURCE_FIELDS = {
    "principals": patterns(PRINCIPALS),
    "not_principals": patterns(PRINCIPALS),
    "request_principals": patterns(ISSUER_PRINCIPALS),
    "not_request_principals": patterns(ISSUER_PRINCIPALS),
    "namespaces": patterns(NAMESPACES),
    "not_namespaces": patterns(NAMESPACES),
    "ip_blocks": cidrs(),
    "not_ip_blocks": cidrs(),
    "remote_ip_blocks": cidrs(),
    "not_remote_ip_blocks": cidrs(),
}
OPERATION_FIELDS = {
    "hosts": patterns(HOSTS),
    "not_hosts": patterns(HOSTS),
    "ports": ports(),
    "not_ports": ports(),
    "methods": st.lists(st.sampled_from(METHODS), max_size=2).map(tuple) | patterns(METHODS),
    "not_methods": patterns(METHODS),
    "paths": patterns(PATHS),
    "not_paths": patterns(PATHS),
}


def sparse(
    cls: type, fields: dict[str, st.SearchStrategy[tuple[object, ...]]]
) -> st.SearchStrategy:
    """Instances with one or two fields set: dense random rules would never match."""

    @st.composite
    def build(draw: st.DrawFn) -> object:
        names = draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=2, unique=True))
        return cls(**{n: draw(fields[n]) for n in names})

    return build()


sources = sparse(Source, SOURCE_FIELDS)
operations = sparse(Operation, OPERATION_FIELDS)
conditions = st.one_of(
    st.builds(
        Condition,
        key=st.just("request.headers[x-tenant]"),
        values=patterns(["acme", "beta"]),
        not_values=patterns(["acme", "beta"]),
    ),
    st.builds(Condition, key=st.just("source.ip"), values=cidrs(), not_values=cidrs()),
    st.builds(
        Condition,
        key=st.just("request.auth.claims[groups]"),
        values=patterns(["admins", "users"]),
        not_values=patterns(["admins"]),
    ),
    st.builds(
        Condition,
        key=st.just("request.auth.claims[realm][role]"),
        values=patterns(["reader", "writer"]),
    ),
    st.builds(
        Condition,
        key=st.just("destination.port"),
        values=st.lists(st.sampled_from(["8000", "9000"]), max_size=2).map(tuple),
    ),
    st.builds(Condition, key=st.just("source.namespace"), values=patterns(NAMESPACES)),
    st.builds(Condition, key=st.just("request.auth.audiences"), values=patterns(["m1", "m2"])),
    st.builds(Condition, key=st.just("connection.sni"), not_values=patterns(["a.svc", "b.svc"])),
)
rules = st.builds(
    Rule,
    sources=st.lists(sources, max_size=2).map(tuple),
    operations=st.lists(operations, max_size=2).map(tuple),
    conditions=st.lists(conditions, max_size=2).map(tuple),
)


@st.composite
def policy_sets(draw: st.DrawFn) -> list[AuthorizationPolicy]:
    count = draw(st.integers(0, 5))
    out = []
    for i in range(count):
        action = draw(st.sampled_from([Action.ALLOW, Action.DENY, Action.AUDIT, Action.CUSTOM]))
        out.append(
            AuthorizationPolicy(
                namespace="foo",
                name=f"p{i}",
                selector=None,
                action=action,
                provider=f"ext{i}" if action is Action.CUSTOM else None,
                rules=tuple(draw(st.lists(rules, max_size=3))),
            )
        )
    return out


requests = st.builds(
    RequestAttributes,
    http=st.booleans(),
    method=st.sampled_from(METHODS),
    path=st.sampled_from(PATHS),
    host=st.sampled_from([*HOSTS, "api.EXAMPLE.com", "SVC.foo"]),
    headers=st.dictionaries(st.just("x-tenant"), st.tuples(st.sampled_from(["acme", "beta", ""]))),
    source_principal=st.none() | st.sampled_from(PRINCIPALS),
    source_ip=st.sampled_from(IPS),
    remote_ip=st.none() | st.sampled_from(IPS),
    destination_ip=st.just("10.0.0.9"),
    destination_port=st.sampled_from([*PORTS, 80]),
    sni=st.none() | st.sampled_from(["a.svc", "b.svc"]),
    request_principal=st.none() | st.sampled_from(ISSUER_PRINCIPALS),
    audiences=st.lists(st.sampled_from(["m1", "m2"]), max_size=2).map(tuple),
    claims=st.fixed_dictionaries(
        {},
        optional={
            "groups": st.sampled_from(["admins", "users"])
            | st.lists(st.sampled_from(["admins", "users", "x"]), max_size=2),
            "realm": st.fixed_dictionaries({"role": st.sampled_from(["reader", "writer"])}),
        },
    ),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies=policy_sets(), reqs=st.lists(requests, min_size=1, max_size=5))
def test_compiled_engine_agrees_with_reference(
    policies: list[AuthorizationPolicy], reqs: list[RequestAttributes]
) -> None:
    compiled = CompiledPolicies(policies)
    for r in reqs:
        fast = compiled.evaluate(r)
        slow = reference_evaluate(policies, r)
        assert (fast.action, fast.policy, fast.rule, fast.audit, fast.audit_policy) == (
            slow.action,
            slow.policy,
            slow.rule,
            slow.audit,
            slow.audit_policy,
        ), (fast.reason, slow.reason)
        custom = compiled.match_custom(r)
        expected = first_match(policies, Action.CUSTOM, r)
        assert (None if custom is None else (custom.policy, custom.rule)) == expected


@settings(max_examples=100, deadline=None)
@given(policies=policy_sets(), r=requests)
def test_adding_a_deny_everything_policy_always_denies(
    policies: list[AuthorizationPolicy], r: RequestAttributes
) -> None:
    deny_all = AuthorizationPolicy(
        namespace="foo",
        name="zz-deny-all",
        selector=None,
        action=Action.DENY,
        provider=None,
        rules=(Rule(),),
    )
    assert not CompiledPolicies([*policies, deny_all]).evaluate(r).allowed
