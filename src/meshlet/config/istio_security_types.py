"""The runtime shape of Istio's ``security.istio.io`` resources.

Frozen, pydantic-free types: the policy engine, the proxy and the control plane
see only these. ``istio_security`` builds them from YAML; keeping the types apart
from the loader lets the hot path import them without the schema machinery.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

Selector = tuple[tuple[str, str], ...] | None


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
    the ``access_token`` query parameter. With no ``jwks`` and no ``jwks_uri`` the
    keys are found by OpenID discovery from the issuer."""

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str | None = None  # inline JWKS JSON
    jwks_uri: str | None = None  # http(s):// fetched and cached; file:// read at load
    from_headers: tuple[tuple[str, str], ...] = ()  # (lowercase name, value prefix)
    from_params: tuple[str, ...] = ()
    from_cookies: tuple[str, ...] = ()  # cookie names, case-sensitive as RFC 6265 says
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
class JwksResolver:
    """Trust for https JWKS fetches: Istio's install-time ``jwksResolverExtraRootCA``,
    written as a meshlet.dev document because meshlet has no install values."""

    name: str
    extra_root_ca: str  # PEM certificates, trusted on top of the system store
    where: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    """Every security resource of a configuration, in load order."""

    peer_authentications: tuple[PeerAuthentication, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    request_authentications: tuple[RequestAuthentication, ...] = ()
    providers: tuple[ExtAuthzProvider, ...] = ()
    # Extra trust anchors (PEM) for https JWKS and discovery fetches, added to the
    # system store: Istio's jwksResolverExtraRootCA. None: the system store only.
    jwks_extra_root_ca: str | None = None
