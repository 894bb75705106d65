"""Istio's ``security.istio.io`` resources: PeerAuthentication, AuthorizationPolicy
and RequestAuthentication (v1 and v1beta1), loaded into frozen runtime types.

A user's Istio YAML must run unchanged where meshlet has the feature and be
refused, naming file, line and field, where it does not: an ignored DENY rule
would silently open a hole. So the schemas (``istio_security_schema``) forbid
unknown fields and the checks below refuse values Istio itself would reject
(wildcards in the middle of a string, path templates, empty sources) rather
than guess. The runtime types live in ``istio_security_types`` and are
re-exported here, the one import path the rest of meshlet uses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

from meshlet.config.istio_common import Resource, parse_resource
from meshlet.config.istio_security_checks import (
    Checker,
    duration_s,
    to_condition,
    to_operation,
    to_source,
)
from meshlet.config.istio_security_schema import (
    AuthzSpec,
    JwksResolverSpec,
    JwtRuleSchema,
    PeerSpec,
    ProviderSpec,
    RequestAuthnSpec,
    validate_spec,
)
from meshlet.config.istio_security_types import (
    Action,
    AuthorizationPolicy,
    Condition,
    ExtAuthzProvider,
    JwksResolver,
    JwtRule,
    MtlsMode,
    Operation,
    PeerAuthentication,
    RequestAuthentication,
    Rule,
    SecurityConfig,
    Selector,
    Source,
)
from meshlet.config.source import Document, load_paths
from meshlet.errors import ConfigError

__all__ = [
    "DRY_RUN_ANNOTATION",
    "GROUP",
    "KINDS",
    "MESHLET_GROUP",
    "VERSIONS",
    "Action",
    "AuthorizationPolicy",
    "Condition",
    "ExtAuthzProvider",
    "JwksResolver",
    "JwtRule",
    "MtlsMode",
    "Operation",
    "PeerAuthentication",
    "RequestAuthentication",
    "Rule",
    "SecurityConfig",
    "Selector",
    "Source",
    "is_security_resource",
    "load_security_documents",
    "load_security_paths",
    "load_security_resources",
    "secure_or_loopback",
]

GROUP = "security.istio.io"
VERSIONS = frozenset({"v1", "v1beta1"})
KINDS = frozenset({"PeerAuthentication", "AuthorizationPolicy", "RequestAuthentication"})
DRY_RUN_ANNOTATION = "istio.io/dry-run"


def _authorization(resource: Resource) -> AuthorizationPolicy:
    spec: AuthzSpec = validate_spec(AuthzSpec, resource)
    check = Checker(resource)
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
                    to_source(check, f.source, (*base, "from", i, "source"))
                    for i, f in enumerate(rule.from_)
                ),
                operations=tuple(
                    to_operation(check, t.operation, (*base, "to", i, "operation"))
                    for i, t in enumerate(rule.to)
                ),
                conditions=tuple(
                    to_condition(check, c, (*base, "when", i)) for i, c in enumerate(rule.when)
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
    spec: PeerSpec = validate_spec(PeerSpec, resource)
    check = Checker(resource)
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


def secure_or_loopback(url: str) -> bool:
    """True for an ``https://`` URL, or an ``http://`` one whose host is a
    loopback address (a local identity provider, or a test): the only URLs
    meshlet follows for OpenID discovery, where no operator chose the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return False
    if parts.scheme == "https":
        return bool(host)
    if parts.scheme != "http":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: "127.example.com" is not loopback
        return False


_NOT_TOKEN = frozenset('()<>@,;:\\"/[]?={} \t')


def _jwt_rule(check: Checker, j: JwtRuleSchema, path: tuple[str | int, ...]) -> JwtRule:
    if not j.issuer:
        check.fail((*path, "issuer"), "issuer must not be empty")
    if j.jwks is not None and j.jwks_uri is not None:
        check.fail(path, "set jwks or jwksUri, not both")
    if j.jwks is None and j.jwks_uri is None and not secure_or_loopback(j.issuer):
        # discovery trusts whatever the issuer's host answers: only over verified TLS
        check.fail(
            (*path, "issuer"),
            "OpenID discovery (no jwks, no jwksUri) needs an https:// issuer "
            f"(or http:// on a loopback address), got {j.issuer!r}",
        )
    if j.jwks_uri is not None and not j.jwks_uri.startswith(("https://", "http://", "file://")):
        check.fail((*path, "jwksUri"), "must be an http(s):// or file:// URI")
    for i, cookie in enumerate(j.from_cookies):
        # RFC 6265 cookie-name is a token: no separators, spaces or '='
        if not cookie or any(c in _NOT_TOKEN or ord(c) < 33 or ord(c) > 126 for c in cookie):
            check.fail((*path, "fromCookies", i), f"not a valid cookie name: {cookie!r}")
    timeout_s = 5.0 if j.timeout is None else duration_s(check, j.timeout, (*path, "timeout"))
    return JwtRule(
        issuer=j.issuer,
        audiences=tuple(j.audiences),
        jwks=j.jwks,
        jwks_uri=j.jwks_uri,
        from_headers=tuple((h.name.lower(), h.prefix) for h in j.from_headers),
        from_params=tuple(j.from_params),
        from_cookies=tuple(j.from_cookies),
        output_payload_to_header=j.output_payload_to_header,
        output_claim_to_headers=tuple(
            (c.header.lower(), c.claim) for c in j.output_claim_to_headers
        ),
        forward_original_token=j.forward_original_token,
        timeout_s=timeout_s,
    )


def _request_authn(resource: Resource) -> RequestAuthentication:
    spec: RequestAuthnSpec = validate_spec(RequestAuthnSpec, resource)
    check = Checker(resource)
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


def _provider(resource: Resource) -> ExtAuthzProvider:
    http = validate_spec(ProviderSpec, resource).envoy_ext_authz_http
    check = Checker(resource)
    base = ("spec", "envoyExtAuthzHttp")
    timeout_s = duration_s(check, http.timeout, (*base, "timeout"))
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


_PEM_CERT = "-----BEGIN CERTIFICATE-----"


def _jwks_resolver(resource: Resource) -> JwksResolver:
    spec: JwksResolverSpec = validate_spec(JwksResolverSpec, resource)
    check = Checker(resource)
    pem = spec.extra_root_ca
    if (pem is None) == (spec.extra_root_ca_file is None):
        check.fail(("spec",), "set exactly one of extraRootCA and extraRootCAFile")
    if spec.extra_root_ca_file is not None:
        # relative to the YAML file, as every other path in meshlet's documents
        path = Path(resource.document.file).parent / spec.extra_root_ca_file
        try:
            pem = path.read_text(encoding="ascii")
        except (OSError, UnicodeError) as exc:
            check.fail(("spec", "extraRootCAFile"), f"cannot read {path}: {exc}")
    field = "extraRootCA" if spec.extra_root_ca is not None else "extraRootCAFile"
    if pem is not None and _PEM_CERT not in pem:
        check.fail(("spec", field), "holds no PEM certificate")
    check.done()
    return JwksResolver(
        name=resource.name, extra_root_ca=pem or "", where=resource.document.where()
    )


_LOADERS: dict[str, Callable[[Resource], object]] = {
    "AuthorizationPolicy": _authorization,
    "PeerAuthentication": _peer,
    "RequestAuthentication": _request_authn,
    "ExtensionProvider": _provider,
    "JwksResolver": _jwks_resolver,
}


MESHLET_GROUP = "meshlet.dev"
MESHLET_KINDS = frozenset({"ExtensionProvider", "JwksResolver"})


def is_security_resource(resource: Resource) -> bool:
    return resource.group == GROUP or (
        resource.group == MESHLET_GROUP and resource.kind in MESHLET_KINDS
    )


def load_security_resources(resources: Iterable[Resource]) -> SecurityConfig:
    """Convert the ``security.istio.io`` resources among ``resources`` (others are
    skipped: they belong to other loaders). Reports every problem at once."""
    problems: list[str] = []
    peers: list[PeerAuthentication] = []
    authz: list[AuthorizationPolicy] = []
    authn: list[RequestAuthentication] = []
    providers: list[ExtAuthzProvider] = []
    resolvers: list[JwksResolver] = []
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
        elif isinstance(loaded, JwksResolver):
            if resolvers:
                problems.append(
                    resource.problem(
                        ("kind",), f"a second JwksResolver (the first is at {resolvers[0].where})"
                    )
                )
            resolvers.append(loaded)
    if problems:
        raise ConfigError(problems)
    return SecurityConfig(
        peer_authentications=tuple(peers),
        authorization_policies=tuple(authz),
        request_authentications=tuple(authn),
        providers=tuple(providers),
        jwks_extra_root_ca=resolvers[0].extra_root_ca if resolvers else None,
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
