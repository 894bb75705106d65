"""Istio's ``security.istio.io`` resources: PeerAuthentication, AuthorizationPolicy
and RequestAuthentication (v1 and v1beta1), loaded into frozen runtime types.

A user's Istio YAML must run unchanged where meshlet has the feature and be
refused, naming file, line and field, where it does not: an ignored DENY rule
would silently open a hole. So the schemas below forbid unknown fields and the
checks after them refuse values Istio itself would reject (wildcards in the
middle of a string, path templates, empty sources) rather than guess.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError
from pydantic.alias_generators import to_camel

from meshlet.config.istio_common import Resource, parse_resource, selector_labels
from meshlet.config.source import Document, load_paths
from meshlet.errors import ConfigError

GROUP = "security.istio.io"
VERSIONS = frozenset({"v1", "v1beta1"})
KINDS = frozenset({"PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication"})
Selector = tuple[tuple[str, str], ...] | None
DRY_RUN_ANNOTATION = "istio.io/dry-run"


class Action(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


class MtlsMode(enum.Enum):
    UNSET = "UNSET"
    DISABLE = "DISABLE"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


# ---------------------------------------------------------------- runtime types


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """``rules[].from[].source``: every non-empty field must match (AND)."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """``rules[].to[].operation``: every non-empty field must match (AND)."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    not_ports: tuple[int, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    """``rules[].when[]``: ``key`` matches one of ``values`` and none of ``not_values``."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """A rule matches when any ``sources`` entry, any ``operations`` entry and
    every ``conditions`` entry match; an empty list is no constraint."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationPolicy:
    namespace: str
    name: str
    selector: Selector
    action: Action
    provider: str | None  # CUSTOM only: the ext-authz provider's name
    rules: tuple[Rule, ...]
    where: str = ""  # file:line, for analyze and explain

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAuthentication:
    namespace: str
    name: str
    selector: Selector
    mode: MtlsMode
    port_modes: tuple[tuple[int, MtlsMode], ...] = ()
    creation_timestamp: str | None = None
    where: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtRule:
    """One accepted JWT issuer. Defaults follow Istio: with no ``from_headers``
    and no ``from_params`` the token is read from ``Authorization: Bearer`` and
    the ``access_token`` query parameter."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str | None = None  # inline JWKS JSON
    jwks_uri: str | None = None  # http(s):// fetched and cached; file:// read at load
    from_headers: tuple[tuple[str, str], ...] = ()  # (lowercase name, value prefix)
    from_params: tuple[str, ...] = ()
    output_payload_to_header: str | None = None
    output_claim_to_headers: tuple[tuple[str, str], ...] = ()  # (header, claim)
    forward_original_token: bool = False
    timeout_s: float = 5.0  # Istio's default JWKS fetch timeout (jwtRules.timeout)


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestAuthentication:
    namespace: str
    name: str
    selector: Selector
    jwt_rules: tuple[JwtRule, ...]
    where: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtAuthzProvider:
    """A CUSTOM action's external authorizer: Istio's MeshConfig
    ``extensionProviders[].envoyExtAuthzHttp``, written as a meshlet.dev document
    because meshlet has no MeshConfig."""

    name: str
    host: str
    port: int
    path_prefix: str = ""
    timeout_s: float = 0.6  # Istio's default ext-authz timeout (600ms)
    fail_open: bool = False  # Istio's default: fail closed
    status_on_error: int = 403  # Envoy's default for an unreachable authorizer
    include_request_headers: tuple[str, ...] = ()  # lowercase names sent to the authorizer
    headers_to_upstream_on_allow: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    """Every security resource of a configuration, in load order."""

    peer_authentications: tuple[PeerAuthentication, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    request_authentications: tuple[RequestAuthentication, ...] = ()
    providers: tuple[ExtAuthzProvider, ...] = ()


# ---------------------------------------------------------------- edge schemas


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True)


Strs = list[StrictStr]


class _SourceSchema(_Strict):
    principals: Strs = []
    not_principals: Strs = []
    request_principals: Strs = []
    not_request_principals: Strs = []
    namespaces: Strs = []
    not_namespaces: Strs = []
    ip_blocks: Strs = []
    not_ip_blocks: Strs = []
    remote_ip_blocks: Strs = []
    not_remote_ip_blocks: Strs = []


class _OperationSchema(_Strict):
    hosts: Strs = []
    not_hosts: Strs = []
    ports: Strs = []
    not_ports: Strs = []
    methods: Strs = []
    not_methods: Strs = []
    paths: Strs = []
    not_paths: Strs = []


class _From(_Strict):
    source: _SourceSchema


class _To(_Strict):
    operation: _OperationSchema


class _ConditionSchema(_Strict):
    key: StrictStr
    values: Strs = []
    not_values: Strs = []


class _RuleSchema(_Strict):
    from_: list[_From] = Field(default=[], alias="from")
    to: list[_To] = []
    when: list[_ConditionSchema] = []


class _Provider(_Strict):
    name: StrictStr


class _AuthzSpec(_Strict):
    selector: dict[str, Any] | None = None
    action: StrictStr = "ALLOW"  # Istio's default action
    provider: _Provider | None = None
    rules: list[_RuleSchema] = []


class _PortMtls(_Strict):
    mode: StrictStr = "UNSET"


class _PeerSpec(_Strict):
    selector: dict[str, Any] | None = None
    mtls: _PortMtls | None = None
    port_level_mtls: dict[int, _PortMtls] = {}


class _HeaderSchema(_Strict):
    name: StrictStr
    prefix: StrictStr = ""


class _ClaimHeader(_Strict):
    header: StrictStr
    claim: StrictStr


class _JwtRuleSchema(_Strict):
    issuer: StrictStr
    audiences: Strs = []
    jwks_uri: StrictStr | None = None
    jwks: StrictStr | None = None
    from_headers: list[_HeaderSchema] = []
    from_params: Strs = []
    output_payload_to_header: StrictStr | None = None
    output_claim_to_headers: list[_ClaimHeader] = []
    forward_original_token: StrictBool = False
    timeout: StrictStr | None = None


class _RequestAuthnSpec(_Strict):
    selector: dict[str, Any] | None = None
    jwt_rules: list[_JwtRuleSchema] = []


class _ExtAuthzHttp(_Strict):
    service: StrictStr
    port: int = Field(gt=0, lt=65536)
    path_prefix: StrictStr = ""
    timeout: StrictStr = "600ms"
    fail_open: StrictBool = False
    status_on_error: StrictStr = "403"
    include_request_headers_in_check: Strs = []
    headers_to_upstream_on_allow: Strs = []


class _ProviderSpec(_Strict):
    envoy_ext_authz_http: _ExtAuthzHttp


def _validate(model: type[_Strict], resource: Resource) -> Any:
    try:
        return model.model_validate(resource.spec)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            path = ("spec", *(p for p in error["loc"] if isinstance(p, str | int)))
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = "unknown field (not supported by meshlet)"
            problems.append(resource.problem(path, message))
        raise ConfigError(problems) from exc


# ---------------------------------------------------------------- value checks

# Istio allows one wildcard, at the start or the end (or alone for presence).
_PATTERN = re.compile(r"^(\*|\*[^*]+|[^*]+\*|[^*]+)$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_DURATION_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class _Checker:
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


def _condition(check: _Checker, c: _ConditionSchema, path: tuple[str | int, ...]) -> Condition:
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


def _source(check: _Checker, s: _SourceSchema, path: tuple[str | int, ...]) -> Source:
    if not any(getattr(s, f) for f in _SourceSchema.model_fields):
        check.fail(path, "a source must set at least one field")
    kw: dict[str, tuple[str, ...]] = {}
    for name in _SourceSchema.model_fields:
        sub = (*path, to_camel(name))
        values = getattr(s, name)
        kw[name] = check.cidrs(values, sub) if "ip_blocks" in name else check.patterns(values, sub)
    return Source(**kw)


def _operation(check: _Checker, o: _OperationSchema, path: tuple[str | int, ...]) -> Operation:
    if not any(getattr(o, f) for f in _OperationSchema.model_fields):
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


def _authorization(resource: Resource) -> AuthorizationPolicy:
    spec: _AuthzSpec = _validate(_AuthzSpec, resource)
    check = _Checker(resource)
    metadata = resource.document.data.get("metadata") or {}
    annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
    if isinstance(annotations, dict) and DRY_RUN_ANNOTATION in annotations:
        # enforcing a dry-run policy would change traffic; ignoring it would hide it
        check.fail(("metadata", "annotations", DRY_RUN_ANNOTATION), "dry-run is not supported")
    try:
        action = Action(spec.action)
    except ValueError:
        check.fail(("spec", "action"), f"must be ALLOW, DENY, AUDIT or CUSTOM, got {spec.action!r}")
        action = Action.DENY
    if action is Action.CUSTOM and spec.provider is None:
        check.fail(("spec", "provider"), "action CUSTOM needs provider.name")
    if action is not Action.CUSTOM and spec.provider is not None:
        check.fail(("spec", "provider"), "provider is only valid with action CUSTOM")
    rules = []
    for r, rule in enumerate(spec.rules):
        base: tuple[str | int, ...] = ("spec", "rules", r)
        rules.append(
            Rule(
                sources=tuple(
                    _source(check, f.source, (*base, "from", i, "source"))
                    for i, f in enumerate(rule.from_)
                ),
                operations=tuple(
                    _operation(check, t.operation, (*base, "to", i, "operation"))
                    for i, t in enumerate(rule.to)
                ),
                conditions=tuple(
                    _condition(check, c, (*base, "when", i)) for i, c in enumerate(rule.when)
                ),
            )
        )
    selector = check.selector(spec.selector)
    check.done()
    return AuthorizationPolicy(
        namespace=resource.namespace,
        name=resource.name,
        selector=selector,
        action=action,
        provider=spec.provider.name if spec.provider else None,
        rules=tuple(rules),
        where=resource.document.where(),
    )


def _peer(resource: Resource) -> PeerAuthentication:
    spec: _PeerSpec = _validate(_PeerSpec, resource)
    check = _Checker(resource)
    mode = check.mode(spec.mtls.mode, ("spec", "mtls", "mode")) if spec.mtls else MtlsMode.UNSET
    selector = check.selector(spec.selector)
    ports = []
    for port, port_mtls in sorted(spec.port_level_mtls.items()):
        path = ("spec", "portLevelMtls", str(port))
        if not 0 < port < 65536:
            check.fail(path, f"port must be in 1..65535, got {port}")
        ports.append((port, check.mode(port_mtls.mode, (*path, "mode"))))
    if ports and selector is None:
        # Istio: port-level settings need a workload; namespace-wide ports are ambiguous.
        check.fail(("spec", "portLevelMtls"), "portLevelMtls requires a workload selector")
    check.done()
    return PeerAuthentication(
        namespace=resource.namespace,
        name=resource.name,
        selector=selector,
        mode=mode,
        port_modes=tuple(ports),
        creation_timestamp=resource.creation_timestamp,
        where=resource.document.where(),
    )


def _jwt_rule(check: _Checker, j: _JwtRuleSchema, path: tuple[str | int, ...]) -> JwtRule:
    if not j.issuer:
        check.fail((*path, "issuer"), "issuer must not be empty")
    if j.jwks is not None and j.jwks_uri is not None:
        check.fail(path, "set jwks or jwksUri, not both")
    if j.jwks is None and j.jwks_uri is None:
        check.fail(path, "meshlet needs jwks or jwksUri (OpenID discovery is not supported)")
    if j.jwks_uri is not None and not j.jwks_uri.startswith(("https://", "http://", "file://")):
        check.fail((*path, "jwksUri"), "must be an http(s):// or file:// URI")
    timeout_s = 5.0 if j.timeout is None else _duration_s(check, j.timeout, (*path, "timeout"))
    return JwtRule(
        issuer=j.issuer,
        audiences=tuple(j.audiences),
        jwks=j.jwks,
        jwks_uri=j.jwks_uri,
        from_headers=tuple((h.name.lower(), h.prefix) for h in j.from_headers),
        from_params=tuple(j.from_params),
        output_payload_to_header=j.output_payload_to_header,
        output_claim_to_headers=tuple(
            (c.header.lower(), c.claim) for c in j.output_claim_to_headers
        ),
        forward_original_token=j.forward_original_token,
        timeout_s=timeout_s,
    )


def _request_authn(resource: Resource) -> RequestAuthentication:
    spec: _RequestAuthnSpec = _validate(_RequestAuthnSpec, resource)
    check = _Checker(resource)
    rules = tuple(
        _jwt_rule(check, j, ("spec", "jwtRules", i)) for i, j in enumerate(spec.jwt_rules)
    )
    selector = check.selector(spec.selector)
    check.done()
    return RequestAuthentication(
        namespace=resource.namespace,
        name=resource.name,
        selector=selector,
        jwt_rules=rules,
        where=resource.document.where(),
    )


def _duration_s(check: _Checker, text: str, path: tuple[str | int, ...]) -> float:
    m = _DURATION.match(text)
    if m is None:
        check.fail(path, f"must be a duration like 5s, got {text!r}")
        return 0.0
    return float(m.group(1)) * _DURATION_S[m.group(2)]


def _provider(resource: Resource) -> ExtAuthzProvider:
    http = _validate(_ProviderSpec, resource).envoy_ext_authz_http
    check = _Checker(resource)
    base = ("spec", "envoyExtAuthzHttp")
    timeout_s = _duration_s(check, http.timeout, (*base, "timeout"))
    if not http.status_on_error.isdigit() or not 400 <= int(http.status_on_error) <= 599:
        check.fail((*base, "statusOnError"), "must be an HTTP error status")
    if http.path_prefix and not http.path_prefix.startswith("/"):
        check.fail((*base, "pathPrefix"), "must start with '/'")
    check.done()
    return ExtAuthzProvider(
        name=resource.name,
        host=http.service,
        port=http.port,
        path_prefix=http.path_prefix,
        timeout_s=timeout_s,
        fail_open=http.fail_open,
        status_on_error=int(http.status_on_error),
        include_request_headers=tuple(h.lower() for h in http.include_request_headers_in_check),
        headers_to_upstream_on_allow=tuple(h.lower() for h in http.headers_to_upstream_on_allow),
    )


_LOADERS: dict[str, Callable[[Resource], object]] = {
    "AuthorizationPolicy": _authorization,
    "PeerAuthentication": _peer,
    "RequestAuthentication": _request_authn,
    "ExtensionProvider": _provider,
}


MESHLET_GROUP = "meshlet.dev"


def is_security_resource(resource: Resource) -> bool:
    return resource.group == GROUP or (
        resource.group == MESHLET_GROUP and resource.kind == "ExtensionProvider"
    )


def load_security_resources(resources: Iterable[Resource]) -> SecurityConfig:
    """Convert the ``security.istio.io`` resources among ``resources`` (others are
    skipped: they belong to other loaders). Reports every problem at once."""
    problems: list[str] = []
    peers: list[PeerAuthentication] = []
    authz: list[AuthorizationPolicy] = []
    authn: list[RequestAuthentication] = []
    providers: list[ExtAuthzProvider] = []
    seen: set[tuple[str, str]] = set()
    for resource in resources:
        if not is_security_resource(resource):
            continue
        if resource.group == MESHLET_GROUP:
            if resource.version != "v1alpha1":
                problems.append(resource.problem(("apiVersion",), "use meshlet.dev/v1alpha1"))
                continue
        elif resource.version not in VERSIONS or resource.kind not in KINDS:
            problems.append(
                resource.problem(
                    ("apiVersion",),
                    f"unsupported {GROUP}/{resource.version} kind {resource.kind!r}",
                )
            )
            continue
        if (resource.kind, resource.ref) in seen:
            problems.append(resource.problem(("metadata", "name"), "duplicate resource"))
            continue
        seen.add((resource.kind, resource.ref))
        try:
            loaded = _LOADERS[resource.kind](resource)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if isinstance(loaded, PeerAuthentication):
            peers.append(loaded)
        elif isinstance(loaded, AuthorizationPolicy):
            authz.append(loaded)
        elif isinstance(loaded, RequestAuthentication):
            authn.append(loaded)
        elif isinstance(loaded, ExtAuthzProvider):
            providers.append(loaded)
    if problems:
        raise ConfigError(problems)
    return SecurityConfig(
        peer_authentications=tuple(peers),
        authorization_policies=tuple(authz),
        request_authentications=tuple(authn),
        providers=tuple(providers),
    )


def load_security_documents(
    documents: Iterable[Document], *, only_security: bool = False
) -> SecurityConfig:
    """Parse envelopes and load the security resources. With ``only_security``
    any other kind is an error (for ``--policies`` files, where a stray
    VirtualService is more likely a mistake than intent)."""
    problems: list[str] = []
    resources: list[Resource] = []
    for document in documents:
        try:
            resource = parse_resource(document)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if only_security and not is_security_resource(resource):
            problems.append(resource.problem(("kind",), f"not a {GROUP} resource: {resource.kind}"))
            continue
        resources.append(resource)
    try:
        config = load_security_resources(resources)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return config


def load_security_paths(paths: Iterable[str], *, only_security: bool = True) -> SecurityConfig:
    """Files and directories of security YAML, as given on a command line."""
    return load_security_documents(load_paths(paths), only_security=only_security)
