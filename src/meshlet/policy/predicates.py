"""One AuthorizationPolicy rule compiled into one predicate over a request.

Istio's matching semantics for a single rule (the engine orders and indexes the
rules; see ``engine``):

* a rule matches when any ``from`` entry, any ``to`` entry and every ``when``
  condition match; inside one ``source``/``operation`` all set fields must match;
  an empty list is no constraint, so ``{}`` matches everything;
* for plain TCP, HTTP-only fields (hosts, methods, paths, request principals,
  ``request.*`` keys) make an ALLOW rule match nothing, while DENY (and AUDIT,
  CUSTOM) rules ignore those fields and so match more: failing closed.

Each field becomes a closure over a precompiled matcher (exact values in a set,
prefixes and suffixes as tuples, CIDRs as integers), built once per snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from meshlet.config.istio_security import Action, Condition, Operation, Rule, Source
from meshlet.policy.attributes import RequestAttributes, strip_port, strip_spiffe
from meshlet.policy.matchers import ip_matcher, string_matcher

Pred = Callable[[RequestAttributes], bool]
Getter = Callable[[RequestAttributes], tuple[str, ...]]

_HTTP_SOURCE_FIELDS = ("request_principals", "not_request_principals")
_HTTP_OPERATION_FIELDS = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")
_IP_KEYS = frozenset({"source.ip", "remote.ip", "destination.ip"})


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
