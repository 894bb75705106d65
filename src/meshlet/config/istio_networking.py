"""Istio ``networking.istio.io`` VirtualService and DestinationRule loaders.

They produce the routing model of ``config/routing.py``. pydantic stays in the
``_*Schema`` classes: strict (``extra="forbid"``), so every field meshlet does not implement
is refused with ``file:line: path: unknown field`` instead of silently ignored.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from meshlet.config.durations import parse_duration
from meshlet.config.routing import (
    DEFAULT_RETRY,
    RETRY_ON_TOKENS,
    ConnectionPool,
    Destination,
    DestinationPolicy,
    Fault,
    HeaderOps,
    HostRoutes,
    KeyMatch,
    LbAlgorithm,
    LoadBalancer,
    MatchKind,
    Mirror,
    OutlierDetection,
    Precedence,
    RetryPolicy,
    Rewrite,
    Route,
    RouteMatch,
    StringMatch,
    Subset,
    TrafficPolicy,
)
from meshlet.config.source import Document
from meshlet.config.validation import problems_from
from meshlet.errors import ConfigError

# ------------------------------------------------------------------ durations


def _checked_duration(text: str) -> str:
    parse_duration(text)
    return text


# A duration kept as text in the schema, checked where pydantic can locate the error.
Duration = Annotated[str, AfterValidator(_checked_duration)]

# --------------------------------------------------------------------- schema


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True)


class Metadata(BaseModel):
    """Kubernetes object metadata: only what meshlet reads; the rest is bookkeeping."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel)
    name: str
    namespace: str = "default"
    annotations: dict[str, str] = Field(default_factory=dict)
    creation_timestamp: str | None = None


class _StringMatchSchema(_Schema):
    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    def convert(self) -> StringMatch:
        if self.exact is not None:
            return StringMatch(kind=MatchKind.EXACT, value=self.exact)
        if self.prefix is not None:
            return StringMatch(kind=MatchKind.PREFIX, value=self.prefix)
        if self.regex is not None:
            return StringMatch(kind=MatchKind.REGEX, value=self.regex)
        return StringMatch(kind=MatchKind.PRESENT)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from exc
        return v


class _MatchSchema(_Schema):
    name: str = ""
    uri: _StringMatchSchema | None = None
    method: _StringMatchSchema | None = None
    authority: _StringMatchSchema | None = None
    headers: dict[str, _StringMatchSchema] = Field(default_factory=dict)
    query_params: dict[str, _StringMatchSchema] = Field(default_factory=dict)
    without_headers: dict[str, _StringMatchSchema] = Field(default_factory=dict)
    ignore_uri_case: bool = False

    def convert(self) -> RouteMatch:
        def keyed(d: dict[str, _StringMatchSchema], lower: bool) -> tuple[KeyMatch, ...]:
            return tuple(
                KeyMatch(name=k.lower() if lower else k, match=v.convert()) for k, v in d.items()
            )

        return RouteMatch(
            name=self.name,
            uri=self.uri.convert() if self.uri else None,
            method=self.method.convert() if self.method else None,
            authority=self.authority.convert() if self.authority else None,
            headers=keyed(self.headers, True),
            query_params=keyed(self.query_params, False),
            without_headers=keyed(self.without_headers, True),
            ignore_uri_case=self.ignore_uri_case,
        )


class _PortSchema(_Schema):
    number: int = Field(ge=1, le=65535)


class _DestinationSchema(_Schema):
    host: str = Field(min_length=1)
    subset: str = ""
    port: _PortSchema | None = None


class _RouteDestinationSchema(_Schema):
    destination: _DestinationSchema
    weight: int = Field(default=0, ge=0)
    headers: _HeadersSchema | None = None


class _PercentSchema(_Schema):
    value: float = Field(ge=0, le=100)


class _HeaderOpsSchema(_Schema):
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)

    def convert(self) -> HeaderOps:
        return HeaderOps(
            set=tuple((k.lower(), v) for k, v in self.set.items()),
            add=tuple((k.lower(), v) for k, v in self.add.items()),
            remove=tuple(k.lower() for k in self.remove),
        )


class _HeadersSchema(_Schema):
    request: _HeaderOpsSchema | None = None
    response: _HeaderOpsSchema | None = None


class _RetriesSchema(_Schema):
    attempts: int = Field(ge=0)
    per_try_timeout: Duration | None = None
    retry_on: str | None = None

    @field_validator("retry_on")
    @classmethod
    def _tokens(cls, v: str | None) -> str | None:
        for token in (v or "").split(","):
            token = token.strip()
            if token and token not in RETRY_ON_TOKENS and not token.isdigit():
                raise ValueError(
                    f"retryOn {token!r} is not supported (supported: "
                    f"{', '.join(sorted(RETRY_ON_TOKENS))}, or a status code)"
                )
        return v

    def convert(self) -> RetryPolicy:
        tokens = frozenset(t.strip() for t in (self.retry_on or "").split(",") if t.strip())
        return RetryPolicy(
            attempts=self.attempts,
            per_try_timeout_s=parse_duration(self.per_try_timeout)
            if self.per_try_timeout
            else None,
            retry_on=tokens or DEFAULT_RETRY.retry_on,
        )


class _DelaySchema(_Schema):
    fixed_delay: Duration
    percentage: _PercentSchema | None = None


class _AbortSchema(_Schema):
    http_status: int = Field(ge=200, le=599)
    percentage: _PercentSchema | None = None


class _FaultSchema(_Schema):
    delay: _DelaySchema | None = None
    abort: _AbortSchema | None = None

    def convert(self) -> Fault:
        d, a = self.delay, self.abort

        def frac(p: _PercentSchema | None) -> float:
            return 1.0 if p is None else p.value / 100.0  # absent percentage = every request

        return Fault(
            delay_s=parse_duration(d.fixed_delay) if d else 0.0,
            delay_fraction=frac(d.percentage) if d else 0.0,
            abort_status=a.http_status if a else 0,
            abort_fraction=frac(a.percentage) if a else 0.0,
        )


class _RewriteSchema(_Schema):
    uri: str | None = None
    authority: str | None = None


class _HttpRouteSchema(_Schema):
    name: str = ""
    match: list[_MatchSchema] = Field(default_factory=list)
    route: list[_RouteDestinationSchema] = Field(min_length=1)
    timeout: Duration | None = None
    retries: _RetriesSchema | None = None
    fault: _FaultSchema | None = None
    mirror: _DestinationSchema | None = None
    mirror_percentage: _PercentSchema | None = None
    headers: _HeadersSchema | None = None
    rewrite: _RewriteSchema | None = None


class _VirtualServiceSpec(_Schema):
    hosts: list[str] = Field(min_length=1)
    gateways: list[Literal["mesh"]] = Field(default_factory=list)
    http: list[_HttpRouteSchema] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)


class VirtualServiceSchema(_Schema):
    api_version: Literal[
        "networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"
    ]
    kind: Literal["VirtualService"]
    metadata: Metadata
    spec: _VirtualServiceSpec
    status: dict[str, Any] | None = None


def _validate(model: type[_Schema], document: Document) -> Any:
    try:
        return model.model_validate(document.data)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc, document)) from exc
    except ValueError as exc:  # a validator outside a field (should not happen)
        raise ConfigError(document.problem((), str(exc))) from exc


META_MAX_BODY = "meshlet.io/max-request-body-bytes"
META_STREAM_IDLE = "meshlet.io/stream-idle-timeout"


def route_annotations(meta: Metadata, document: Document) -> tuple[int | None, float | None]:
    """meshlet's per-route extras, carried as annotations so the YAML stays valid Istio."""
    body: int | None = None
    idle: float | None = None
    path = ("metadata", "annotations")
    if META_MAX_BODY in meta.annotations:
        raw = meta.annotations[META_MAX_BODY]
        if not raw.isdigit():
            raise ConfigError(
                document.problem((*path, META_MAX_BODY), f"not a byte count: {raw!r}")
            )
        body = int(raw)
    if META_STREAM_IDLE in meta.annotations:
        try:
            idle = parse_duration(meta.annotations[META_STREAM_IDLE])
        except ValueError as exc:
            raise ConfigError(document.problem((*path, META_STREAM_IDLE), str(exc))) from exc
    return body, idle


def _destination(d: _DestinationSchema, weight: int) -> Destination:
    return Destination(
        host=d.host, subset=d.subset, port=d.port.number if d.port else None, weight=weight
    )


def load_virtual_service(document: Document) -> list[HostRoutes]:
    """One HostRoutes per host of the VirtualService."""
    vs: VirtualServiceSchema = _validate(VirtualServiceSchema, document)
    max_body, idle = route_annotations(vs.metadata, document)
    owner = f"{vs.metadata.namespace}/{vs.metadata.name}"
    problems: list[str] = []
    routes: list[Route] = []
    for i, r in enumerate(vs.spec.http):
        path = ("spec", "http", i)
        if len(r.route) > 1 and all(d.weight == 0 for d in r.route):
            problems.append(
                document.problem(
                    (*path, "route"), "weights are required with more than one destination"
                )
            )
        weights = [d.weight if len(r.route) > 1 else (d.weight or 100) for d in r.route]
        for j, d in enumerate(r.route):
            if d.headers is not None:
                problems.append(
                    document.problem(
                        (*path, "route", j, "headers"),
                        "per-destination headers are not supported; set them on the route",
                    )
                )
        mirrors: tuple[Mirror, ...] = ()
        if r.mirror is not None:
            fraction = 1.0 if r.mirror_percentage is None else r.mirror_percentage.value / 100
            mirrors = (Mirror(destination=_destination(r.mirror, 100), fraction=fraction),)
        routes.append(
            Route(
                name=r.name or f"{owner}.http[{i}]",
                source=document.where(path),
                order=(vs.metadata.creation_timestamp or "", owner, i),
                precedence=Precedence.ORDERED,
                matches=tuple(m.convert() for m in r.match),
                destinations=tuple(
                    _destination(d.destination, w) for d, w in zip(r.route, weights, strict=True)
                ),
                timeout_s=parse_duration(r.timeout) if r.timeout else None,
                retries=r.retries.convert() if r.retries else DEFAULT_RETRY,
                fault=r.fault.convert() if r.fault else None,
                mirrors=mirrors,
                request_headers=(
                    r.headers.request.convert() if r.headers and r.headers.request else HeaderOps()
                ),
                response_headers=(
                    r.headers.response.convert()
                    if r.headers and r.headers.response
                    else HeaderOps()
                ),
                rewrite=Rewrite(uri_prefix=r.rewrite.uri, authority=r.rewrite.authority)
                if r.rewrite
                else None,
                max_request_body_bytes=max_body,
                stream_idle_timeout_s=idle,
            )
        )
    if problems:
        raise ConfigError(problems)
    return [HostRoutes(host=h.lower(), routes=tuple(routes)) for h in vs.spec.hosts]


# ------------------------------------------------------------- DestinationRule


class _ConsistentHashSchema(_Schema):
    http_header_name: str | None = None
    http_cookie: _CookieSchema | None = None
    use_source_ip: bool = False
    ring_hash: _RingHashSchema | None = None
    maglev: _MaglevSchema | None = None
    minimum_ring_size: int | None = Field(default=None, ge=1)


class _CookieSchema(_Schema):
    name: str
    path: str | None = None
    ttl: str | None = None


class _RingHashSchema(_Schema):
    minimum_ring_size: int = Field(default=1024, ge=1, le=8_388_608)


class _MaglevSchema(_Schema):
    table_size: int = Field(default=65537, ge=1, le=5_000_011)


class _LoadBalancerSchema(_Schema):
    simple: (
        Literal[
            "UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM", "PASSTHROUGH"
        ]
        | None
    ) = None
    consistent_hash: _ConsistentHashSchema | None = None

    def convert(self) -> LoadBalancer:
        ch = self.consistent_hash
        if ch is not None:
            return LoadBalancer(
                algorithm=LbAlgorithm.MAGLEV if ch.maglev else LbAlgorithm.RING_HASH,
                hash_header=ch.http_header_name.lower() if ch.http_header_name else None,
                hash_cookie=ch.http_cookie.name if ch.http_cookie else None,
                hash_source_ip=ch.use_source_ip,
                ring_size=(
                    ch.ring_hash.minimum_ring_size if ch.ring_hash else ch.minimum_ring_size or 1024
                ),
                maglev_table_size=ch.maglev.table_size if ch.maglev else 65537,
            )
        simple = {None: "P2C_EWMA", "UNSPECIFIED": "P2C_EWMA", "LEAST_CONN": "LEAST_REQUEST"}.get(
            self.simple, self.simple
        )
        return LoadBalancer(algorithm=LbAlgorithm(simple))


class _TcpPoolSchema(_Schema):
    max_connections: int | None = Field(default=None, ge=1)
    connect_timeout: Duration | None = None


class _HttpPoolSchema(_Schema):
    http1_max_pending_requests: int | None = Field(default=None, ge=1)
    http2_max_requests: int | None = Field(default=None, ge=1)
    max_requests_per_connection: int | None = Field(default=None, ge=0)
    max_retries: int | None = Field(default=None, ge=0)
    idle_timeout: Duration | None = None


class _ConnectionPoolSchema(_Schema):
    tcp: _TcpPoolSchema | None = None
    http: _HttpPoolSchema | None = None

    def convert(self) -> ConnectionPool:
        base = ConnectionPool()
        t, h = self.tcp or _TcpPoolSchema(), self.http or _HttpPoolSchema()
        return ConnectionPool(
            max_connections=t.max_connections or base.max_connections,
            connect_timeout_s=(
                parse_duration(t.connect_timeout) if t.connect_timeout else base.connect_timeout_s
            ),
            max_pending_requests=h.http1_max_pending_requests or base.max_pending_requests,
            max_requests=h.http2_max_requests or base.max_requests,
            max_requests_per_connection=h.max_requests_per_connection or 0,
            max_retries=base.max_retries if h.max_retries is None else h.max_retries,
            idle_timeout_s=parse_duration(h.idle_timeout)
            if h.idle_timeout
            else base.idle_timeout_s,
        )


class _OutlierSchema(_Schema):
    consecutive_5xx_errors: int | None = Field(default=None, ge=0, alias="consecutive5xxErrors")
    consecutive_gateway_errors: int | None = Field(default=None, ge=0)
    interval: Duration | None = None
    base_ejection_time: Duration | None = None
    max_ejection_percent: int | None = Field(default=None, ge=0, le=100)
    min_health_percent: int | None = Field(default=None, ge=0, le=100)

    def convert(self) -> OutlierDetection:
        b = OutlierDetection()
        return OutlierDetection(
            consecutive_5xx=b.consecutive_5xx
            if self.consecutive_5xx_errors is None
            else self.consecutive_5xx_errors,
            consecutive_gateway_errors=self.consecutive_gateway_errors or 0,
            interval_s=parse_duration(self.interval) if self.interval else b.interval_s,
            base_ejection_time_s=parse_duration(self.base_ejection_time)
            if self.base_ejection_time
            else b.base_ejection_time_s,
            max_ejection_percent=b.max_ejection_percent
            if self.max_ejection_percent is None
            else self.max_ejection_percent,
            min_health_percent=self.min_health_percent or 0,
        )


class _TrafficPolicySchema(_Schema):
    load_balancer: _LoadBalancerSchema | None = None
    connection_pool: _ConnectionPoolSchema | None = None
    outlier_detection: _OutlierSchema | None = None

    def convert(self, parent: TrafficPolicy | None = None) -> TrafficPolicy:
        p = parent or TrafficPolicy()
        return TrafficPolicy(
            load_balancer=self.load_balancer.convert() if self.load_balancer else p.load_balancer,
            connection_pool=self.connection_pool.convert()
            if self.connection_pool
            else p.connection_pool,
            outlier_detection=self.outlier_detection.convert()
            if self.outlier_detection
            else p.outlier_detection,
        )


class _SubsetSchema(_Schema):
    name: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: _TrafficPolicySchema | None = None


class _DestinationRuleSpec(_Schema):
    host: str = Field(min_length=1)
    traffic_policy: _TrafficPolicySchema | None = None
    subsets: list[_SubsetSchema] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)


class DestinationRuleSchema(_Schema):
    api_version: Literal[
        "networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"
    ]
    kind: Literal["DestinationRule"]
    metadata: Metadata
    spec: _DestinationRuleSpec
    status: dict[str, Any] | None = None


def load_destination_rule(document: Document) -> DestinationPolicy:
    dr: DestinationRuleSchema = _validate(DestinationRuleSchema, document)
    top = dr.spec.traffic_policy.convert() if dr.spec.traffic_policy else TrafficPolicy()
    # Istio: a subset's trafficPolicy overrides the top-level one field by field.
    subsets = tuple(
        Subset(
            name=s.name,
            labels=tuple(sorted(s.labels.items())),
            policy=s.traffic_policy.convert(top) if s.traffic_policy else top,
        )
        for s in dr.spec.subsets
    )
    names = [s.name for s in subsets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(document.problem(("spec", "subsets"), f"duplicate subset names {dupes}"))
    return DestinationPolicy(
        host=dr.spec.host.lower(), source=document.where(), policy=top, subsets=subsets
    )


_RouteDestinationSchema.model_rebuild()
_ConsistentHashSchema.model_rebuild()
