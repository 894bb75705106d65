"""Gateway API ``HTTPRoute`` (gateway.networking.k8s.io/v1) attached to a Service.

meshlet is a mesh, so only the GAMMA attachment is meaningful: ``parentRefs``
of kind Service (core group). Routes are translated into the Istio-shaped
routing model of ``config/routing.py`` with ``Precedence.SPECIFICITY``
so the engine applies Gateway API's precedence rules instead of list order.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self

from pydantic import Field, ValidationError, field_validator, model_validator

from meshlet.config.durations import parse_duration
from meshlet.config.istio_schema import Duration, IstioSchema, Metadata, route_annotations
from meshlet.config.routing import (
    NO_RETRY,
    BackendKind,
    Destination,
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
from meshlet.config.validation import problems_from
from meshlet.errors import ConfigError

INFERENCE_GROUPS = ("inference.networking.k8s.io", "inference.networking.x-k8s.io")


def _regex_ok(v: str) -> str:
    try:
        re.compile(v)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from exc
    return v


class _PathMatch(IstioSchema):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = "/"

    @model_validator(mode="after")
    def _regex(self) -> Self:
        if self.type == "RegularExpression":
            _regex_ok(self.value)
        return self

    def convert(self) -> StringMatch:
        if self.type == "RegularExpression":
            return StringMatch(kind=MatchKind.REGEX, value=self.value)
        kind = MatchKind.EXACT if self.type == "Exact" else MatchKind.PATH_PREFIX
        value = self.value
        if kind is MatchKind.PATH_PREFIX and len(value) > 1:
            value = value.rstrip("/")  # Gateway API prefixes match whole path elements
        return StringMatch(kind=kind, value=value)


class _KeyMatch(IstioSchema):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str = Field(min_length=1)
    value: str

    @model_validator(mode="after")
    def _regex(self) -> Self:
        if self.type == "RegularExpression":
            _regex_ok(self.value)
        return self

    def convert(self, lower: bool) -> KeyMatch:
        kind = MatchKind.REGEX if self.type == "RegularExpression" else MatchKind.EXACT
        return KeyMatch(
            name=self.name.lower() if lower else self.name,
            match=StringMatch(kind=kind, value=self.value),
        )


class _Match(IstioSchema):
    path: _PathMatch | None = None
    headers: list[_KeyMatch] = Field(default_factory=list)
    query_params: list[_KeyMatch] = Field(default_factory=list)
    method: (
        Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
        | None
    ) = None

    def convert(self) -> RouteMatch:
        return RouteMatch(
            # The spec's default match is PathPrefix "/".
            uri=(self.path or _PathMatch()).convert(),
            method=StringMatch(kind=MatchKind.EXACT, value=self.method) if self.method else None,
            headers=tuple(h.convert(True) for h in self.headers),
            query_params=tuple(q.convert(False) for q in self.query_params),
        )


class _HeaderValue(IstioSchema):
    name: str = Field(min_length=1)
    value: str


class _HeaderModifier(IstioSchema):
    set: list[_HeaderValue] = Field(default_factory=list)
    add: list[_HeaderValue] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)

    def convert(self) -> HeaderOps:
        return HeaderOps(
            set=tuple((h.name.lower(), h.value) for h in self.set),
            add=tuple((h.name.lower(), h.value) for h in self.add),
            remove=tuple(n.lower() for n in self.remove),
        )


class _PathModifier(IstioSchema):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: str | None = None
    replace_prefix_match: str | None = None


class _UrlRewrite(IstioSchema):
    hostname: str | None = None
    path: _PathModifier | None = None


class _BackendRef(IstioSchema):
    group: str = ""
    kind: str = "Service"
    name: str = Field(min_length=1)
    namespace: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    weight: int = Field(default=1, ge=0, le=1_000_000)  # the spec's default weight is 1

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in ("Service", "InferencePool"):
            raise ValueError("only Service and InferencePool backends are supported")
        return v

    def destination(self) -> Destination:
        kind = BackendKind.INFERENCE_POOL if self.kind == "InferencePool" else BackendKind.SERVICE
        return Destination(host=self.name.lower(), port=self.port, weight=self.weight, kind=kind)


class _Fraction(IstioSchema):
    numerator: int = Field(ge=0)
    denominator: int = Field(default=100, ge=1)


class _RequestMirror(IstioSchema):
    backend_ref: _BackendRef
    percent: int | None = Field(default=None, ge=0, le=100)
    fraction: _Fraction | None = None

    def convert(self) -> Mirror:
        if self.fraction is not None:
            frac = min(1.0, self.fraction.numerator / self.fraction.denominator)
        else:
            frac = 1.0 if self.percent is None else self.percent / 100
        return Mirror(destination=self.backend_ref.destination(), fraction=frac)


class _Filter(IstioSchema):
    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier", "URLRewrite", "RequestMirror"]
    request_header_modifier: _HeaderModifier | None = None
    response_header_modifier: _HeaderModifier | None = None
    url_rewrite: _UrlRewrite | None = Field(default=None, alias="urlRewrite")
    request_mirror: _RequestMirror | None = None


class _Timeouts(IstioSchema):
    request: Duration | None = None
    backend_request: Duration | None = None


class _Rule(IstioSchema):
    name: str | None = None
    matches: list[_Match] = Field(default_factory=lambda: [_Match()])
    filters: list[_Filter] = Field(default_factory=list)
    backend_refs: list[_BackendRef] = Field(default_factory=list)
    timeouts: _Timeouts | None = None


class _ParentRef(IstioSchema):
    group: str = "gateway.networking.k8s.io"
    kind: str = "Gateway"
    name: str = Field(min_length=1)
    namespace: str | None = None
    port: int | None = None
    section_name: str | None = None


class _Spec(IstioSchema):
    parent_refs: list[_ParentRef] = Field(min_length=1)
    rules: list[_Rule] = Field(default_factory=lambda: [_Rule()])


class HTTPRouteSchema(IstioSchema):
    api_version: Literal["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"]
    kind: Literal["HTTPRoute"]
    metadata: Metadata
    spec: _Spec
    status: dict[str, Any] | None = None


def _seconds(text: str | None) -> float | None:
    # Gateway API: a zero duration means "no timeout".
    return None if text is None else (parse_duration(text) or None)


def _rule_to_route(
    rule: _Rule,
    i: int,
    owner: tuple[str, str],
    doc: Document,
    problems: list[str],
    extras: tuple[int | None, float | None],
) -> Route:
    path = ("spec", "rules", i)
    req, resp = HeaderOps(), HeaderOps()
    rewrite: Rewrite | None = None
    mirrors: list[Mirror] = []
    matches = tuple(m.convert() for m in rule.matches)
    for j, f in enumerate(rule.filters):
        fpath = (*path, "filters", j)
        body = {
            "RequestHeaderModifier": f.request_header_modifier,
            "ResponseHeaderModifier": f.response_header_modifier,
            "URLRewrite": f.url_rewrite,
            "RequestMirror": f.request_mirror,
        }[f.type]
        if body is None:
            problems.append(doc.problem(fpath, f"type {f.type} needs its matching field"))
        elif isinstance(body, _HeaderModifier):
            if f.type == "RequestHeaderModifier":
                req = body.convert()
            else:
                resp = body.convert()
        elif isinstance(body, _RequestMirror):
            mirrors.append(body.convert())
        else:
            p = body.path
            if (
                p is not None
                and p.type == "ReplacePrefixMatch"
                and any(m.uri is None or m.uri.kind is not MatchKind.PATH_PREFIX for m in matches)
            ):
                problems.append(doc.problem(fpath, "ReplacePrefixMatch needs PathPrefix matches"))
            rewrite = Rewrite(
                uri_prefix=p.replace_prefix_match if p and p.type == "ReplacePrefixMatch" else None,
                full_path=p.replace_full_path if p and p.type == "ReplaceFullPath" else None,
                authority=body.hostname,
            )
    if not rule.backend_refs:
        problems.append(doc.problem(path, "backendRefs: at least one backend is required"))
    t = rule.timeouts or _Timeouts()
    backend_s = _seconds(t.backend_request)
    return Route(
        name=rule.name or f"{owner[1]}.rules[{i}]",
        source=doc.where(path),
        order=(*owner, i),
        precedence=Precedence.SPECIFICITY,
        matches=matches,
        destinations=tuple(b.destination() for b in rule.backend_refs),
        timeout_s=_seconds(t.request),
        # HTTPRoute has no retry stanza in v1's standard channel: no retries, but a
        # backendRequest timeout is kept as the per-try timeout of the one try.
        retries=NO_RETRY
        if backend_s is None
        else RetryPolicy(attempts=0, per_try_timeout_s=backend_s),
        mirrors=tuple(mirrors),
        request_headers=req,
        response_headers=resp,
        rewrite=rewrite,
        max_request_body_bytes=extras[0],
        stream_idle_timeout_s=extras[1],
    )


def load_http_route(document: Document) -> list[HostRoutes]:
    """One HostRoutes per Service parentRef."""
    try:
        hr = HTTPRouteSchema.model_validate(document.data)
    except ValidationError as exc:
        raise ConfigError(problems_from(exc, document)) from exc
    extras = route_annotations(hr.metadata, document)
    owner = (hr.metadata.creation_timestamp or "", f"{hr.metadata.namespace}/{hr.metadata.name}")
    problems: list[str] = []
    hosts: list[str] = []
    for i, ref in enumerate(hr.spec.parent_refs):
        if ref.kind != "Service" or ref.group not in ("", "core"):
            problems.append(
                document.problem(
                    ("spec", "parentRefs", i),
                    f"parentRef kind {ref.kind!r} is not supported: meshlet is a mesh and attaches "
                    'routes to Services (GAMMA); set group: "" and kind: Service',
                )
            )
        hosts.append(ref.name.lower())
    routes = tuple(
        _rule_to_route(r, i, owner, document, problems, extras) for i, r in enumerate(hr.spec.rules)
    )
    if problems:
        raise ConfigError(problems)
    return [HostRoutes(host=h, routes=routes) for h in dict.fromkeys(hosts)]
