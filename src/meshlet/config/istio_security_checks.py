"""Value checks for ``security.istio.io`` specs, after the schema has checked shape.

They refuse what Istio itself would reject (a wildcard in the middle, a path
template, an empty source, an unknown ``when`` key) and collect every problem
of a resource, so a user fixes them all in one pass.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from pydantic.alias_generators import to_camel

from meshlet.config.istio_common import Resource, selector_labels
from meshlet.config.istio_security_schema import ConditionSchema, OperationSchema, SourceSchema
from meshlet.config.istio_security_types import (
    Condition,
    MtlsMode,
    Operation,
    Selector,
    Source,
)
from meshlet.errors import ConfigError

# Istio allows one wildcard, at the start or the end (or alone for presence).
_PATTERN = re.compile(r"^(\*|\*[^*]+|[^*]+\*|[^*]+)$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_DURATION_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class Checker:
    """Collects every problem in one resource, so a user fixes them in one pass."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        self.problems: list[str] = []

    def fail(self, path: Sequence[str | int], message: str) -> None:
        self.problems.append(self.resource.problem(path, message))

    def patterns(self, values: Sequence[str], path: Sequence[str | int]) -> tuple[str, ...]:
        for i, value in enumerate(values):
            if not _PATTERN.match(value):
                self.fail((*path, i), f"wildcard only as prefix, suffix or alone, got {value!r}")
            elif "{" in value:
                self.fail((*path, i), f"path templates are not supported, got {value!r}")
        return tuple(values)

    def cidrs(self, values: Sequence[str], path: Sequence[str | int]) -> tuple[str, ...]:
        for i, value in enumerate(values):
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                self.fail((*path, i), f"not an IP address or CIDR, got {value!r}")
        return tuple(values)

    def ports(self, values: Sequence[str], path: Sequence[str | int]) -> tuple[int, ...]:
        out: list[int] = []
        for i, value in enumerate(values):
            if value.isdigit() and 0 < int(value) < 65536:
                out.append(int(value))
            else:
                self.fail((*path, i), f"port must be a number in 1..65535, got {value!r}")
        return tuple(out)

    def mode(self, raw: str, path: Sequence[str | int]) -> MtlsMode:
        try:
            return MtlsMode(raw)
        except ValueError:
            self.fail(path, f"must be one of UNSET, DISABLE, PERMISSIVE, STRICT, got {raw!r}")
            return MtlsMode.UNSET

    def selector(self, raw: object) -> Selector:
        try:
            return selector_labels(self.resource, raw, ("spec", "selector"))
        except ConfigError as exc:
            self.problems.extend(exc.problems)
            return None

    def done(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


# The `when` keys Istio documents, and how their values are checked. A key that is
# not here is refused: an unknown condition cannot be evaluated safely.
_HEADER_KEY = re.compile(r"^request\.headers\[([^\[\]]+)\]$")
_CLAIM_KEY = re.compile(r"^request\.auth\.claims(\[[^\[\]]+\])+$")
_PLAIN_KEYS = frozenset(
    {
        "source.principal",
        "source.namespace",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "connection.sni",
    }
)
_IP_KEYS = frozenset({"source.ip", "remote.ip", "destination.ip"})


def to_condition(check: Checker, c: ConditionSchema, path: tuple[str | int, ...]) -> Condition:
    if not c.values and not c.not_values:
        check.fail(path, "a condition needs values or notValues")
    for field_name, values in (("values", c.values), ("notValues", c.not_values)):
        if c.key in _IP_KEYS:
            check.cidrs(values, (*path, field_name))
        elif c.key == "destination.port":
            check.ports(values, (*path, field_name))
        elif c.key in _PLAIN_KEYS or _HEADER_KEY.match(c.key) or _CLAIM_KEY.match(c.key):
            check.patterns(values, (*path, field_name))
        else:
            check.fail((*path, "key"), f"unsupported condition key {c.key!r}")
            break
    return Condition(key=c.key, values=tuple(c.values), not_values=tuple(c.not_values))


def to_source(check: Checker, s: SourceSchema, path: tuple[str | int, ...]) -> Source:
    if not any(getattr(s, f) for f in SourceSchema.model_fields):
        check.fail(path, "a source must set at least one field")
    kw: dict[str, tuple[str, ...]] = {}
    for name in SourceSchema.model_fields:
        sub = (*path, to_camel(name))
        values = getattr(s, name)
        kw[name] = check.cidrs(values, sub) if "ip_blocks" in name else check.patterns(values, sub)
    return Source(**kw)


def to_operation(check: Checker, o: OperationSchema, path: tuple[str | int, ...]) -> Operation:
    if not any(getattr(o, f) for f in OperationSchema.model_fields):
        check.fail(path, "an operation must set at least one field")
    p = path
    return Operation(
        hosts=check.patterns(o.hosts, (*p, "hosts")),
        not_hosts=check.patterns(o.not_hosts, (*p, "notHosts")),
        ports=check.ports(o.ports, (*p, "ports")),
        not_ports=check.ports(o.not_ports, (*p, "notPorts")),
        methods=check.patterns(o.methods, (*p, "methods")),
        not_methods=check.patterns(o.not_methods, (*p, "notMethods")),
        paths=check.patterns(o.paths, (*p, "paths")),
        not_paths=check.patterns(o.not_paths, (*p, "notPaths")),
    )


def duration_s(check: Checker, text: str, path: tuple[str | int, ...]) -> float:
    m = _DURATION.match(text)
    if m is None:
        check.fail(path, f"must be a duration like 5s, got {text!r}")
        return 0.0
    return float(m.group(1)) * _DURATION_S[m.group(2)]
