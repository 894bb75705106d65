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

Each rule becomes one closure over precompiled matchers (``predicates``). Rules
are then indexed by (destination port, method) from their ``ports``/``methods``
constraints, so one dict lookup yields the short, ordered list of rules that
could match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshlet.config.istio_security import Action, AuthorizationPolicy, Rule
from meshlet.policy.attributes import Decision, RequestAttributes, Verdict
from meshlet.policy.predicates import Pred, compile_rule

# Beyond this many (port, method) cells the index stops splitting by method.
_MAX_INDEX_CELLS = 1024


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
