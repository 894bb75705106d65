"""The engine's one facade for the proxy: ``Router.plan(attrs, rng) -> ForwardPlan``.

A plan says everything the outbound pipeline must do for one request, already
decided: which backend cluster (weighted pick done), the rewritten path and
authority, header mutations, timeouts, retry policy, whether a fault fires,
which mirrors get a copy, the body limit, the consistent-hash key and, for
inference pools, the target model and criticality. The proxy performs it; the
per-cluster objects (pickers, pool limits, outlier detectors) are built with
``Router.traffic_policy`` and ``meshlet.traffic.balancer.make_picker``.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlet.config.istio_networking import (
    DEFAULT_RETRY,
    BackendKind,
    Destination,
    HeaderOps,
    MatchKind,
    RetryPolicy,
    Route,
    TrafficPolicy,
)
from meshlet.errors import NoRoute
from meshlet.traffic.balancer import RandomSource, hash_key
from meshlet.traffic.inference import InferenceTarget, pick_weighted, resolve
from meshlet.traffic.loader import RoutingConfig
from meshlet.traffic.match import CompiledMatch, RequestAttributes
from meshlet.traffic.streaming import DEFAULT_STREAM_IDLE_S
from meshlet.traffic.table import HostIndex, RouteHit, RouteTable


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardPlan:
    route: str  # route name; "" when the host has no routing config (default route)
    route_source: str  # file:line of the route
    backend: Destination  # the cluster chosen: host, subset, port
    backends: tuple[Destination, ...]  # every weighted backend of the route
    path: str  # after rewrite (query kept)
    authority: str | None  # None: keep the Host header
    request_headers: HeaderOps
    response_headers: HeaderOps
    timeout_s: float | None  # total, from the first byte sent to the last received
    stream_idle_timeout_s: float | None
    retries: RetryPolicy
    fault_delay_s: float  # 0: no delay injected
    fault_abort_status: int  # 0: no abort
    mirrors: tuple[Destination, ...]  # clusters that get a fire-and-forget copy
    max_request_body_bytes: int | None
    hash_key: str | None
    policy: TrafficPolicy  # the DestinationRule policy of the chosen backend/subset
    inference: InferenceTarget | None = None

    @property
    def cluster(self) -> str:
        """A stable name for per-cluster state: ``host`` or ``host|subset``."""
        b = self.backend
        return f"{b.host}|{b.subset}" if b.subset else b.host


class Router:
    """Compiled once per routing snapshot; ``plan`` is the hot path."""

    __slots__ = ("_index", "config")

    def __init__(self, config: RoutingConfig) -> None:
        self.config = config
        self._index = HostIndex(config.hosts)

    def table(self, host: str) -> RouteTable | None:
        return self._index.lookup(host)

    def traffic_policy(self, host: str, subset: str = "") -> TrafficPolicy:
        dr = self.config.destinations.get(host)
        return TrafficPolicy() if dr is None else dr.for_subset(subset)

    def subset_labels(self, host: str, subset: str) -> tuple[tuple[str, str], ...]:
        """The endpoint labels a subset selects; raises NoRoute for an unknown subset."""
        if not subset:
            return ()
        dr = self.config.destinations.get(host)
        for s in dr.subsets if dr else ():
            if s.name == subset:
                return s.labels
        raise NoRoute(f"subset {subset!r} of {host!r} is not defined")

    def plan(self, attrs: RequestAttributes, rng: RandomSource) -> ForwardPlan:
        """Decide everything for one request. Raises NoRoute when the host has
        routes and none matches (Istio answers 404 then)."""
        table = self._index.lookup(attrs.host)
        if table is None:
            return self._default_plan(attrs)
        hit = table.best(attrs)
        if hit is None:
            raise NoRoute(f"no route of {table.host!r} matches {attrs.method} {attrs.path}")
        return self._plan_for(hit, attrs, rng)

    def _default_plan(self, attrs: RequestAttributes) -> ForwardPlan:
        backend = Destination(host=attrs.host)
        policy = self.traffic_policy(attrs.host)
        return ForwardPlan(
            route="",
            route_source="",
            backend=backend,
            backends=(backend,),
            path=_target(attrs),
            authority=None,
            request_headers=HeaderOps(),
            response_headers=HeaderOps(),
            timeout_s=None,
            stream_idle_timeout_s=DEFAULT_STREAM_IDLE_S,
            retries=DEFAULT_RETRY,
            fault_delay_s=0.0,
            fault_abort_status=0,
            mirrors=(),
            max_request_body_bytes=None,
            hash_key=hash_key(policy.load_balancer, attrs),
            policy=policy,
        )

    def _plan_for(self, hit: RouteHit, attrs: RequestAttributes, rng: RandomSource) -> ForwardPlan:
        route = hit.route
        # The draws happen in a fixed order so a seeded source replays a plan exactly.
        backend = pick_weighted([(d, d.weight) for d in route.destinations], rng.random())
        if backend is None:
            raise NoRoute(f"route {route.name!r} has no backend with weight > 0")
        delay_s, abort = 0.0, 0
        if route.fault is not None:
            f = route.fault
            if f.delay_fraction and rng.random() < f.delay_fraction:
                delay_s = f.delay_s
            if f.abort_fraction and rng.random() < f.abort_fraction:
                abort = f.abort_status
        mirrors = tuple(
            m.destination for m in route.mirrors if m.fraction >= 1.0 or rng.random() < m.fraction
        )
        inference = None
        policy = self.traffic_policy(backend.host, backend.subset)
        if backend.kind is BackendKind.INFERENCE_POOL:
            pool = self.config.pools.get(backend.host)
            if pool is None:
                raise NoRoute(f"InferencePool {backend.host!r} is not defined")
            inference = resolve(
                pool,
                attrs.model_name,
                attrs.headers,
                self.config.models,
                self.config.objectives,
                rng.random(),
            )
        return ForwardPlan(
            route=route.name,
            route_source=route.source,
            backend=backend,
            backends=route.destinations,
            path=_rewrite_path(route, hit.match, attrs),
            authority=route.rewrite.authority if route.rewrite else None,
            request_headers=route.request_headers,
            response_headers=route.response_headers,
            timeout_s=route.timeout_s,
            stream_idle_timeout_s=route.stream_idle_timeout_s or DEFAULT_STREAM_IDLE_S,
            retries=route.retries,
            fault_delay_s=delay_s,
            fault_abort_status=abort,
            mirrors=mirrors,
            max_request_body_bytes=route.max_request_body_bytes,
            hash_key=hash_key(policy.load_balancer, attrs),
            policy=policy,
            inference=inference,
        )


def _target(attrs: RequestAttributes, path: str | None = None) -> str:
    p = attrs.path if path is None else path
    return f"{p}?{attrs.raw_query}" if attrs.raw_query else p


def _rewrite_path(route: Route, match: CompiledMatch | None, attrs: RequestAttributes) -> str:
    rw = route.rewrite
    if rw is None or (rw.uri_prefix is None and rw.full_path is None):
        return _target(attrs)
    if rw.full_path is not None:
        return _target(attrs, rw.full_path)
    new = rw.uri_prefix or ""
    uri = match.source.uri if match is not None else None
    if uri is not None and uri.kind in (MatchKind.PREFIX, MatchKind.PATH_PREFIX):
        rest = attrs.path[len(uri.value) :] if uri.value != "/" else attrs.path[1:]
        if uri.kind is MatchKind.PATH_PREFIX:
            # Gateway API: "/foo" -> "/" on "/foo/bar" gives "/bar", not "//bar".
            joined = new.rstrip("/") + "/" + rest.lstrip("/") if rest else (new or "/")
            return _target(attrs, joined)
        return _target(attrs, new + rest)
    return _target(attrs, new)  # Istio: a non-prefix match rewrites the whole path
