"""Authorization policies compiled into predicates and indexed for evaluation.

Istio's semantics, as its AuthorizationPolicy reference defines them:

* order: CUSTOM, then DENY, then ALLOW; AUDIT only marks the request;
* a DENY policy that matches denies; if any ALLOW policy applies to the workload,
  a request no ALLOW policy matches is denied; with no ALLOW policy it is allowed;
* a rule matches when any ``from`` entry, any ``to`` entry and every ``when``
  condition match; ``{}`` matches everything; a policy with no rules matches
  nothing (so an ALLOW policy with no rules denies everything);
* for plain TCP, HTTP-only fields (hosts, methods, paths, request principals,
  ``request.*`` keys) make an ALLOW rule match nothing, while DENY (and AUDIT,
  CUSTOM) rules ignore those fields and so match more: failing closed.

Each rule becomes one closure over precompiled matchers. Rules are then indexed
by (destination port, method) from their ``ports``/``methods`` constraints, so
one dict lookup yields the short, ordered list of rules that could match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
from meshlet.policy.matchers import ip_matcher, string_matcher

Pred = Callable[[RequestAttributes], bool]
Getter = Callable[[RequestAttributes], tuple[str, ...]]

_HTTP_SOURCE_FIELDS = ("request_principals", "not_request_principals")
_HTTP_OPERATION_FIELDS = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")
_IP_KEYS = frozenset({"source.ip", "remote.ip", "destination.ip"})
# Beyond this many (port, method) cells the index stops splitting by method.
_MAX_INDEX_CELLS = 1024


def _always(_r: RequestAttributes) -> bool:
    return True


def _all(preds: Sequence[Pred]) -> Pred:
    if not preds:
        return _always
    if len(preds) == 1:
        return preds[0]
    items = tuple(preds)

    def every(r: RequestAttributes) -> bool:
        for p in items:  # noqa: SIM110 - a plain loop skips the generator's per-call cost
            if not p(r):
                return False
        return True

    return every


def _any(preds: Sequence[Pred]) -> Pred:
    if len(preds) == 1:
        return preds[0]
    items = tuple(preds)

    def some(r: RequestAttributes) -> bool:
        for p in items:  # noqa: SIM110 - a plain loop skips the generator's per-call cost
            if p(r):
                return True
        return False

    return some


def _field(
    values: Sequence[str],
    get: Callable[[RequestAttributes], str | None],
    *,
    negate: bool,
    fold_case: bool = False,
    ip: bool = False,
) -> Pred:
    m = ip_matcher(values) if ip else string_matcher(values, fold_case=fold_case)
    if negate:
        return lambda r: not m(get(r))
    return lambda r: m(get(r))


def has_http_fields(rule: Rule) -> bool:
    """True when the rule uses a field that only exists for HTTP traffic."""
    return (
        any(getattr(s, f) for s in rule.sources for f in _HTTP_SOURCE_FIELDS)
        or any(getattr(o, f) for o in rule.operations for f in _HTTP_OPERATION_FIELDS)
        or any(c.key.startswith("request.") for c in rule.conditions)
    )


def _source(s: Source, http: bool) -> Pred:
    preds: list[Pred] = []
    for values, negate in ((s.principals, False), (s.not_principals, True)):
        if values:
            preds.append(_field([strip_spiffe(v) for v in values], _principal, negate=negate))
    if http:
        for values, negate in ((s.request_principals, False), (s.not_request_principals, True)):
            if values:
                preds.append(_field(values, _request_principal, negate=negate))
    for values, negate in ((s.namespaces, False), (s.not_namespaces, True)):
        if values:
            preds.append(_field(values, _namespace, negate=negate))
    for values, negate, get in (
        (s.ip_blocks, False, _source_ip),
        (s.not_ip_blocks, True, _source_ip),
        (s.remote_ip_blocks, False, _remote_ip),
        (s.not_remote_ip_blocks, True, _remote_ip),
    ):
        if values:
            preds.append(_field(values, get, negate=negate, ip=True))
    return _all(preds)


def _operation(o: Operation, http: bool) -> Pred:
    preds: list[Pred] = []
    if o.ports:
        ports = frozenset(o.ports)
        preds.append(lambda r: r.destination_port in ports)
    if o.not_ports:
        not_ports = frozenset(o.not_ports)
        preds.append(lambda r: r.destination_port not in not_ports)
    if http:
        hosts = [strip_port(h) for h in o.hosts]
        not_hosts = [strip_port(h) for h in o.not_hosts]
        for values, negate, get, fold in (
            (hosts, False, _host, True),
            (not_hosts, True, _host, True),
            (o.methods, False, _method, False),
            (o.not_methods, True, _method, False),
            (o.paths, False, _path, False),
            (o.not_paths, True, _path, False),
        ):
            if values:
                preds.append(_field(values, get, negate=negate, fold_case=fold))
    return _all(preds)


def _condition(c: Condition, http: bool) -> Pred | None:
    if c.key.startswith("request.") and not http:
        return None
    get = condition_getter(c.key)
    if c.key in _IP_KEYS:
        yes, no = ip_matcher(c.values), ip_matcher(c.not_values)
    elif c.key == "destination.port":
        yes = string_matcher(str(int(v)) for v in c.values)
        no = string_matcher(str(int(v)) for v in c.not_values)
    else:
        yes, no = string_matcher(c.values), string_matcher(c.not_values)
    has_values = bool(c.values)

    def pred(r: RequestAttributes) -> bool:
        found = get(r)
        if has_values and not any(yes(v) for v in found):
            return False
        return not any(no(v) for v in found)

    return pred


def compile_rule(rule: Rule, *, http: bool, action: Action) -> Pred | None:
    """The rule as one predicate, or None when it can never match (an ALLOW rule
    with HTTP-only fields, evaluated for TCP)."""
    if not http and action is Action.ALLOW and has_http_fields(rule):
        return None
    parts: list[Pred] = []
    if rule.sources:
        parts.append(_any([_source(s, http) for s in rule.sources]))
    if rule.operations:
        parts.append(_any([_operation(o, http) for o in rule.operations]))
    for c in rule.conditions:
        pred = _condition(c, http)
        if pred is not None:
            parts.append(pred)
    return _all(parts)


# ------------------------------------------------------------ attribute getters


def _principal(r: RequestAttributes) -> str | None:
    return r.source_principal


def _request_principal(r: RequestAttributes) -> str | None:
    return r.request_principal


def _namespace(r: RequestAttributes) -> str | None:
    return r.source_namespace


def _source_ip(r: RequestAttributes) -> str | None:
    return r.source_ip


def _remote_ip(r: RequestAttributes) -> str | None:
    return r.effective_remote_ip


def _host(r: RequestAttributes) -> str | None:
    return strip_port(r.host)


def _method(r: RequestAttributes) -> str | None:
    return r.method


def _path(r: RequestAttributes) -> str | None:
    return r.path


def _one(value: str | None) -> tuple[str, ...]:
    return (value,) if value is not None else ()


def claim_values(claims: object, names: Sequence[str]) -> tuple[str, ...]:
    """A (possibly nested) claim as strings: a string is one value, a list of
    strings is many; anything else matches nothing."""
    value = claims
    for name in names:
        if not isinstance(value, dict) or name not in value:
            return ()
        value = value[name]
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def condition_getter(key: str) -> Getter:
    """The values a ``when`` key reads from a request (empty when absent)."""
    if key.startswith("request.headers["):
        name = key[len("request.headers[") : -1].lower()
        return lambda r: r.headers.get(name, ())
    if key.startswith("request.auth.claims["):
        names = key[len("request.auth.claims[") : -1].split("][")
        return lambda r: claim_values(r.claims, names)
    simple: dict[str, Getter] = {
        "source.ip": lambda r: _one(r.source_ip),
        "remote.ip": lambda r: _one(r.effective_remote_ip),
        "source.namespace": lambda r: _one(r.source_namespace),
        "source.principal": lambda r: _one(r.source_principal),
        "request.auth.principal": lambda r: _one(r.request_principal),
        "request.auth.audiences": lambda r: r.audiences,
        "request.auth.presenter": lambda r: _one(r.presenter),
        "destination.ip": lambda r: _one(r.destination_ip),
        "destination.port": lambda r: (str(r.destination_port),),
        "connection.sni": lambda r: _one(r.sni),
    }
    try:
        return simple[key]
    except KeyError:
        raise AssertionError(f"BUG: condition key {key!r} passed the loader") from None


# ------------------------------------------------------------------ the index


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    policy: str
    rule: int
    provider: str | None
    pred: Pred
    ports: frozenset[int] | None  # None: any port
    methods: frozenset[str] | None  # None: any method
    decision: Decision | None  # the prebuilt answer when this entry decides


def _constraint_ports(rule: Rule) -> frozenset[int] | None:
    if not rule.operations or not all(o.ports for o in rule.operations):
        return None
    return frozenset(p for o in rule.operations for p in o.ports)


def _constraint_methods(rule: Rule) -> frozenset[str] | None:
    if not rule.operations or not all(o.methods for o in rule.operations):
        return None
    methods = [m for o in rule.operations for m in o.methods]
    if any("*" in m for m in methods):
        return None
    return frozenset(methods)


class _Index:
    """Entries by (port, method), each cell keeping the entries' original order."""

    __slots__ = ("_methods", "_ports", "_table")

    def __init__(self, entries: Sequence[_Entry]) -> None:
        ports = {p for e in entries if e.ports for p in e.ports}
        methods = {m for e in entries if e.methods for m in e.methods}
        if (len(ports) + 1) * (len(methods) + 1) > _MAX_INDEX_CELLS:
            methods = set()
        self._ports = frozenset(ports)
        self._methods = frozenset(methods)
        self._table: dict[int | None, dict[str | None, tuple[_Entry, ...]]] = {}
        for pk in (*ports, None):
            row = self._table[pk] = {}
            for mk in (*methods, None):
                row[mk] = tuple(
                    e
                    for e in entries
                    if (e.ports is None or pk in e.ports)
                    and (e.methods is None or not methods or mk in e.methods)
                )

    def candidates(self, port: int, method: str) -> tuple[_Entry, ...]:
        row = self._table[port if port in self._ports else None]
        return row[method if method in self._methods else None]


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomMatch:
    """A CUSTOM policy matched: ask ``provider`` before going on."""

    provider: str
    policy: str
    rule: int


_PAST = {Verdict.ALLOW: "allowed", Verdict.DENY: "denied"}
_ORDER = (Action.CUSTOM, Action.DENY, Action.ALLOW, Action.AUDIT)
_CUSTOM, _DENY, _ALLOW, _AUDIT = range(4)
_NO_ALLOW_POLICY = Decision(
    action=Verdict.ALLOW,
    policy=None,
    rule=None,
    audit=False,
    reason="allowed: no ALLOW policy applies to this workload",
)
_NO_ALLOW_MATCH = Decision(
    action=Verdict.DENY,
    policy=None,
    rule=None,
    audit=False,
    reason="denied: ALLOW policies apply but none matched",
)


class CompiledPolicies:
    """The authorization policies of one workload, ready to evaluate."""

    __slots__ = ("_has_allow", "_http", "_tcp", "header_names", "policies")

    def __init__(self, policies: Sequence[AuthorizationPolicy]) -> None:
        self.policies = tuple(policies)
        # the request headers any condition reads: the caller decodes only these
        self.header_names = frozenset(
            c.key[len("request.headers[") : -1].lower()
            for p in self.policies
            for rule in p.rules
            for c in rule.conditions
            if c.key.startswith("request.headers[")
        )
        self._has_allow = any(p.action is Action.ALLOW for p in self.policies)
        # tuples indexed by _CUSTOM.._AUDIT: an Enum's hash is a Python-level call per lookup
        self._http = tuple(_Index(self._entries(a, http=True)) for a in _ORDER)
        self._tcp = tuple(_Index(self._entries(a, http=False)) for a in _ORDER)

    def _entries(self, action: Action, *, http: bool) -> list[_Entry]:
        out: list[_Entry] = []
        for policy in self.policies:
            if policy.action is not action:
                continue
            for i, rule in enumerate(policy.rules):
                pred = compile_rule(rule, http=http, action=action)
                if pred is None:
                    continue
                verdict = Verdict.ALLOW if action is Action.ALLOW else Verdict.DENY
                out.append(
                    _Entry(
                        policy=policy.ref,
                        rule=i,
                        provider=policy.provider,
                        pred=pred,
                        ports=_constraint_ports(rule),
                        methods=_constraint_methods(rule) if http else None,
                        decision=Decision(
                            action=verdict,
                            policy=policy.ref,
                            rule=i,
                            audit=False,
                            reason=f"{_PAST[verdict]} by {action.value} policy "
                            f"{policy.ref} rule {i}",
                        ),
                    )
                )
        return out

    @staticmethod
    def _first(index: _Index, r: RequestAttributes) -> _Entry | None:
        for entry in index.candidates(r.destination_port, r.method):
            if entry.pred(r):
                return entry
        return None

    def match_custom(self, r: RequestAttributes) -> CustomMatch | None:
        """The first CUSTOM policy rule that matches, whose provider must be asked."""
        entry = self._first((self._http if r.http else self._tcp)[_CUSTOM], r)
        if entry is None or entry.provider is None:
            return None
        return CustomMatch(provider=entry.provider, policy=entry.policy, rule=entry.rule)

    def evaluate(self, r: RequestAttributes) -> Decision:
        """DENY, then ALLOW, plus the AUDIT mark (CUSTOM is ``match_custom``)."""
        indexes = self._http if r.http else self._tcp
        decision: Decision | None
        deny = self._first(indexes[_DENY], r)
        if deny is not None:
            decision = deny.decision
        elif not self._has_allow:
            decision = _NO_ALLOW_POLICY
        else:
            allow = self._first(indexes[_ALLOW], r)
            decision = allow.decision if allow is not None else _NO_ALLOW_MATCH
        assert decision is not None, "BUG: every entry carries its decision"
        audit = self._first(indexes[_AUDIT], r)
        return decision.with_audit(audit.policy) if audit is not None else decision
