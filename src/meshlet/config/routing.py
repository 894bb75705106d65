"""The routing model: what VirtualService, DestinationRule, HTTPRoute and the
Inference Extension's resources become after loading.

Frozen, slotted types only; no pydantic. The shape is Istio's because Istio's
VirtualService is the richest of the sources; Gateway API HTTPRoutes
(``config/gateway_api.py``) are translated into the same types, so the traffic
engine (``meshlet.traffic``) sees one shape whichever YAML a user wrote
(STYLE.md rule 2).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"  # Istio: a plain string prefix ("/v2" matches "/v2x")
    PATH_PREFIX = "path_prefix"  # Gateway API PathPrefix: whole path elements only
    REGEX = "regex"
    PRESENT = "present"  # header/query present with any value (Istio: `{}` or regex ".*")


@dataclass(frozen=True, slots=True, kw_only=True)
class StringMatch:
    kind: MatchKind
    value: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyMatch:
    """A header or query parameter: ``name`` is lowercased for headers."""

    name: str
    match: StringMatch


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    """All conditions must hold (AND); a route's matches are OR-ed."""

    name: str = ""
    uri: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: tuple[KeyMatch, ...] = ()
    query_params: tuple[KeyMatch, ...] = ()
    without_headers: tuple[KeyMatch, ...] = ()
    ignore_uri_case: bool = False


class BackendKind(enum.Enum):
    SERVICE = "service"
    INFERENCE_POOL = "inference_pool"


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    host: str
    subset: str = ""
    port: int | None = None
    weight: int = 100
    kind: BackendKind = BackendKind.SERVICE


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    attempts: int
    per_try_timeout_s: float | None = None
    retry_on: frozenset[str] = frozenset()


# Istio's default when a route says nothing: 2 retries on connect-failure,
# refused-stream and 503 (istio.io "Retries": "default ... 2 ... retryOn
# connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes").
DEFAULT_RETRY = RetryPolicy(
    attempts=2, retry_on=frozenset({"connect-failure", "refused-stream", "503"})
)
NO_RETRY = RetryPolicy(attempts=0)

RETRY_ON_TOKENS = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "connect-failure",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    delay_s: float = 0.0
    delay_fraction: float = 0.0
    abort_status: int = 0
    abort_fraction: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderOps:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Rewrite:
    """``uri_prefix`` replaces the matched prefix (or the whole path when the match
    was not a prefix), Istio's ``rewrite.uri``; ``full_path`` replaces the path."""

    uri_prefix: str | None = None
    full_path: str | None = None
    authority: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Mirror:
    destination: Destination
    fraction: float = 1.0


class Precedence(enum.Enum):
    ORDERED = "ordered"  # VirtualService: first matching route in list order
    SPECIFICITY = "specificity"  # HTTPRoute: Gateway API's precedence rules


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    name: str
    source: str  # file:line, for `route explain` and errors
    # The tie-breaker: (creationTimestamp or "", owner "ns/name", rule index).
    order: tuple[str, str, int]
    precedence: Precedence
    matches: tuple[RouteMatch, ...]  # empty = match everything
    destinations: tuple[Destination, ...]
    timeout_s: float | None = None
    retries: RetryPolicy = DEFAULT_RETRY
    fault: Fault | None = None
    mirrors: tuple[Mirror, ...] = ()
    request_headers: HeaderOps = HeaderOps()
    response_headers: HeaderOps = HeaderOps()
    rewrite: Rewrite | None = None
    max_request_body_bytes: int | None = None
    stream_idle_timeout_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HostRoutes:
    """Everything routed for one host, in precedence order of its sources."""

    host: str
    routes: tuple[Route, ...]


class LbAlgorithm(enum.Enum):
    P2C_EWMA = "P2C_EWMA"  # meshlet's default (Linkerd's), also Istio's UNSPECIFIED
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"
    RING_HASH = "RING_HASH"
    MAGLEV = "MAGLEV"


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadBalancer:
    algorithm: LbAlgorithm = LbAlgorithm.P2C_EWMA
    hash_header: str | None = None
    hash_cookie: str | None = None
    # httpCookie.ttl: when set, a request without the cookie gets one generated
    # and set on the response (Istio/Envoy); 0 makes it a session cookie. None:
    # no cookie is generated and such a request has no hash key.
    hash_cookie_ttl_s: float | None = None
    hash_cookie_path: str | None = None  # httpCookie.path of a generated cookie
    hash_source_ip: bool = False
    ring_size: int = 1024  # Envoy's minimum_ring_size default
    maglev_table_size: int = 65537  # Envoy's default, a prime


_UNLIMITED = 2**32 - 1  # Envoy's circuit-breaker defaults are "effectively unlimited"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionPool:
    max_connections: int = _UNLIMITED
    connect_timeout_s: float = 10.0  # Istio's default connectTimeout
    max_pending_requests: int = _UNLIMITED
    max_requests: int = _UNLIMITED
    max_requests_per_connection: int = 0  # 0 = unlimited (Istio)
    max_retries: int = _UNLIMITED
    idle_timeout_s: float = 3600.0  # Envoy's idle_timeout default: 1 h


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetection:
    consecutive_5xx: int = 5  # Istio default
    consecutive_gateway_errors: int = 0  # 0 = off (Istio default)
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficPolicy:
    load_balancer: LoadBalancer = LoadBalancer()
    connection_pool: ConnectionPool = ConnectionPool()
    outlier_detection: OutlierDetection | None = None  # off unless configured (Istio)


@dataclass(frozen=True, slots=True, kw_only=True)
class Subset:
    name: str
    labels: tuple[tuple[str, str], ...]
    policy: TrafficPolicy


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationPolicy:
    host: str
    source: str
    policy: TrafficPolicy = TrafficPolicy()
    subsets: tuple[Subset, ...] = ()

    def for_subset(self, subset: str) -> TrafficPolicy:
        for s in self.subsets:
            if s.name == subset:
                return s.policy
        return self.policy
