"""Istio ``networking.istio.io`` DestinationRule loader.

It produces the ``DestinationPolicy`` of ``config/routing.py``: load balancing,
connection pool and outlier detection per host and per subset. The schemas are
strict, so a field meshlet does not implement is refused with ``file:line``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from meshlet.config.durations import parse_duration
from meshlet.config.istio_schema import Duration, IstioSchema, Metadata, validate_document
from meshlet.config.routing import (
    ConnectionPool,
    DestinationPolicy,
    LbAlgorithm,
    LoadBalancer,
    OutlierDetection,
    Subset,
    TrafficPolicy,
)
from meshlet.config.source import Document
from meshlet.errors import ConfigError


class _ConsistentHashSchema(IstioSchema):
    http_header_name: str | None = None
    http_cookie: _CookieSchema | None = None
    use_source_ip: bool = False
    ring_hash: _RingHashSchema | None = None
    maglev: _MaglevSchema | None = None
    minimum_ring_size: int | None = Field(default=None, ge=1)


class _CookieSchema(IstioSchema):
    name: str
    path: str | None = None
    ttl: Duration | None = None


class _RingHashSchema(IstioSchema):
    minimum_ring_size: int = Field(default=1024, ge=1, le=8_388_608)


class _MaglevSchema(IstioSchema):
    table_size: int = Field(default=65537, ge=1, le=5_000_011)


class _LoadBalancerSchema(IstioSchema):
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
                hash_cookie_ttl_s=(
                    parse_duration(ch.http_cookie.ttl)
                    if ch.http_cookie and ch.http_cookie.ttl
                    else None
                ),
                hash_cookie_path=ch.http_cookie.path if ch.http_cookie else None,
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


class _TcpPoolSchema(IstioSchema):
    max_connections: int | None = Field(default=None, ge=1)
    connect_timeout: Duration | None = None


class _HttpPoolSchema(IstioSchema):
    http1_max_pending_requests: int | None = Field(default=None, ge=1)
    http2_max_requests: int | None = Field(default=None, ge=1)
    max_requests_per_connection: int | None = Field(default=None, ge=0)
    max_retries: int | None = Field(default=None, ge=0)
    idle_timeout: Duration | None = None


class _ConnectionPoolSchema(IstioSchema):
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


class _OutlierSchema(IstioSchema):
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


class _TrafficPolicySchema(IstioSchema):
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


class _SubsetSchema(IstioSchema):
    name: str = Field(min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    traffic_policy: _TrafficPolicySchema | None = None


class _DestinationRuleSpec(IstioSchema):
    host: str = Field(min_length=1)
    traffic_policy: _TrafficPolicySchema | None = None
    subsets: list[_SubsetSchema] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)


class DestinationRuleSchema(IstioSchema):
    api_version: Literal[
        "networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"
    ]
    kind: Literal["DestinationRule"]
    metadata: Metadata
    spec: _DestinationRuleSpec
    status: dict[str, Any] | None = None


def load_destination_rule(document: Document) -> DestinationPolicy:
    dr: DestinationRuleSchema = validate_document(DestinationRuleSchema, document)
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


_ConsistentHashSchema.model_rebuild()
