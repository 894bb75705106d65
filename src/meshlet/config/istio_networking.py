"""Istio ``networking.istio.io`` VirtualService loader (DestinationRule:
``istio_destination_rule``).

It produces the routing model of ``config/routing.py``. pydantic stays in the
``_*Schema`` classes: strict (``extra="forbid"``), so every field meshlet does not implement
is refused with ``file:line: path: unknown field`` instead of silently ignored.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from meshlet.config.durations import parse_duration
from meshlet.config.istio_schema import (
    Duration,
    IstioSchema,
    Metadata,
    route_annotations,
    validate_document,
)
from meshlet.config.routing import (
    DEFAULT_RETRY,
    RETRY_ON_TOKENS,
    Destination,
    Fault,
    HeaderOps,
    HostRoutes,
    KeyMatch,
    MatchKind,
    Mirror,
    Precedence,
    RetryPolicy,
    Rewrite,
    Route,
    RouteMatch,
    StringMatch,
)
from meshlet.config.source import Document
from meshlet.errors import ConfigError


class _StringMatchSchema(IstioSchema):
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


class _MatchSchema(IstioSchema):
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


class _PortSchema(IstioSchema):
    number: int = Field(ge=1, le=65535)


class _DestinationSchema(IstioSchema):
    host: str = Field(min_length=1)
    subset: str = ""
    port: _PortSchema | None = None


class _RouteDestinationSchema(IstioSchema):
    destination: _DestinationSchema
    weight: int = Field(default=0, ge=0)
    headers: _HeadersSchema | None = None


class _PercentSchema(IstioSchema):
    value: float = Field(ge=0, le=100)


class _HeaderOpsSchema(IstioSchema):
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)

    def convert(self) -> HeaderOps:
        return HeaderOps(
            set=tuple((k.lower(), v) for k, v in self.set.items()),
            add=tuple((k.lower(), v) for k, v in self.add.items()),
            remove=tuple(k.lower() for k in self.remove),
        )


class _HeadersSchema(IstioSchema):
    request: _HeaderOpsSchema | None = None
    response: _HeaderOpsSchema | None = None


class _RetriesSchema(IstioSchema):
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


class _DelaySchema(IstioSchema):
    fixed_delay: Duration
    percentage: _PercentSchema | None = None


class _AbortSchema(IstioSchema):
    http_status: int = Field(ge=200, le=599)
    percentage: _PercentSchema | None = None


class _FaultSchema(IstioSchema):
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


class _RewriteSchema(IstioSchema):
    uri: str | None = None
    authority: str | None = None


class _HttpRouteSchema(IstioSchema):
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


class _VirtualServiceSpec(IstioSchema):
    hosts: list[str] = Field(min_length=1)
    gateways: list[Literal["mesh"]] = Field(default_factory=list)
    http: list[_HttpRouteSchema] = Field(default_factory=list)
    export_to: list[str] = Field(default_factory=list)


class VirtualServiceSchema(IstioSchema):
    api_version: Literal[
        "networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"
    ]
    kind: Literal["VirtualService"]
    metadata: Metadata
    spec: _VirtualServiceSpec
    status: dict[str, Any] | None = None


def _destination(d: _DestinationSchema, weight: int) -> Destination:
    return Destination(
        host=d.host, subset=d.subset, port=d.port.number if d.port else None, weight=weight
    )


def load_virtual_service(document: Document) -> list[HostRoutes]:
    """One HostRoutes per host of the VirtualService."""
    vs: VirtualServiceSchema = validate_document(VirtualServiceSchema, document)
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


_RouteDestinationSchema.model_rebuild()
