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

from meshlet.config.routing import (
    DEFAULT_RETRY,
    BackendKind,
    Destination,
    HeaderOps,
    LbAlgorithm,
    LoadBalancer,
    MatchKind,
    RetryPolicy,
    Route,
    TrafficPolicy,
)
from meshlet.errors import NoRoute
from meshlet.traffic.balancer import RandomSource, hash_key, session_cookie
from meshlet.traffic.inference import InferenceTarget, resolve
from meshlet.traffic.loader import RoutingConfig
from meshlet.traffic.match import CompiledMatch, RequestAttributes
from meshlet.traffic.streaming import DEFAULT_STREAM_IDLE_S
from meshlet.traffic.table import HostIndex, RouteHit, RouteTable


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardPlan:
    """One request's decisions. Per-request fields are stored; per-route ones are
    read through ``rule`` (the matched route, None for an unrouted host's default
    route) so building a plan stays cheap on the hot path."""

    rule: Route | None
    backend: Destination  # the cluster chosen: host, subset, port
    path: str  # after rewrite (query kept)
    fault_delay_s: float = 0.0  # 0: no delay injected
    fault_abort_status: int = 0  # 0: no abort
    mirrors: tuple[Destination, ...] = ()  # clusters that get a fire-and-forget copy
    hash_key: str | None = None
    set_cookie: str | None = None  # a generated hash cookie, for the response
    policy: TrafficPolicy  # the DestinationRule policy of the chosen backend/subset
    inference: InferenceTarget | None = None

    @property
    def cluster(self) -> str:
        """A stable name for per-cluster state: ``host`` or ``host|subset``."""
        b = self.backend
        return f"{b.host}|{b.subset}" if b.subset else b.host

    @property
    def route(self) -> str:
        """The route's name; "" for the default route of an unrouted host."""
        return "" if self.rule is None else self.rule.name

    @property
    def route_source(self) -> str:
        return "" if self.rule is None else self.rule.source

    @property
    def backends(self) -> tuple[Destination, ...]:
        """Every weighted backend of the route."""
        return (self.backend,) if self.rule is None else self.rule.destinations

    @property
    def authority(self) -> str | None:
        """The Host to send; None keeps the request's."""
        rw = None if self.rule is None else self.rule.rewrite
        return None if rw is None else rw.authority

    @property
    def request_headers(self) -> HeaderOps:
        return _NO_OPS if self.rule is None else self.rule.request_headers

    @property
    def response_headers(self) -> HeaderOps:
        return _NO_OPS if self.rule is None else self.rule.response_headers

    @property
    def timeout_s(self) -> float | None:
        """Total: from the first byte sent to the last byte received."""
        return None if self.rule is None else self.rule.timeout_s

    @property
    def stream_idle_timeout_s(self) -> float:
        idle = None if self.rule is None else self.rule.stream_idle_timeout_s
        return DEFAULT_STREAM_IDLE_S if idle is None else idle

    @property
    def retries(self) -> RetryPolicy:
        return DEFAULT_RETRY if self.rule is None else self.rule.retries

    @property
    def max_request_body_bytes(self) -> int | None:
        return None if self.rule is None else self.rule.max_request_body_bytes


_NO_OPS = HeaderOps()


class Router:
    """Compiled once per routing snapshot; ``plan`` is the hot path."""

    __slots__ = ("_index", "_policies", "config")

    def __init__(self, config: RoutingConfig) -> None:
        self.config = config
        self._index = HostIndex(config.hosts)
        self._policies: dict[tuple[str, str], TrafficPolicy] = {}

    def table(self, host: str) -> RouteTable | None:
        return self._index.lookup(host)

    def traffic_policy(self, host: str, subset: str = "") -> TrafficPolicy:
        """The DestinationRule policy for a host/subset (defaults when none)."""
        key = (host, subset)
        found = self._policies.get(key)
        if found is None:
            dr = self.config.destinations.get(host)
            found = self._policies[key] = _DEFAULT_POLICY if dr is None else dr.for_subset(subset)
        return found

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
            policy = self.traffic_policy(attrs.host)
            key, cookie = _hashing(policy.load_balancer, attrs, rng)
            return ForwardPlan(
                rule=None,
                backend=Destination(host=attrs.host),
                path=_target(attrs),
                policy=policy,
                hash_key=key,
                set_cookie=cookie,
            )
        hit = table.best(attrs)
        if hit is None:
            raise NoRoute(f"no route of {table.host!r} matches {attrs.method} {attrs.path}")
        return self._plan_for(hit, attrs, rng)

    def _plan_for(self, hit: RouteHit, attrs: RequestAttributes, rng: RandomSource) -> ForwardPlan:
        route = hit.route
        # The draws happen in a fixed order so a seeded source replays a plan exactly.
        dests = route.destinations
        backend = dests[0] if len(dests) == 1 else _pick_destination(dests, rng.random())
        if backend is None:
            raise NoRoute(f"route {route.name!r} has no backend with weight > 0")
        delay_s, abort = 0.0, 0
        if route.fault is not None:
            f = route.fault
            if f.delay_fraction and rng.random() < f.delay_fraction:
                delay_s = f.delay_s
            if f.abort_fraction and rng.random() < f.abort_fraction:
                abort = f.abort_status
        mirrors: tuple[Destination, ...] = ()
        if route.mirrors:
            mirrors = tuple(
                m.destination
                for m in route.mirrors
                if m.fraction >= 1.0 or rng.random() < m.fraction
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
        key, cookie = _hashing(policy.load_balancer, attrs, rng)
        return ForwardPlan(
            rule=route,
            backend=backend,
            path=_target(attrs)
            if route.rewrite is None
            else _rewrite_path(route, hit.match, attrs),
            fault_delay_s=delay_s,
            fault_abort_status=abort,
            mirrors=mirrors,
            hash_key=key,
            set_cookie=cookie,
            policy=policy,
            inference=inference,
        )


_DEFAULT_POLICY = TrafficPolicy()
_HASHED = frozenset({LbAlgorithm.RING_HASH, LbAlgorithm.MAGLEV})


def _hashing(
    lb: LoadBalancer, attrs: RequestAttributes, rng: RandomSource
) -> tuple[str | None, str | None]:
    """The consistent-hash key, and the Set-Cookie value when the key is a cookie
    generated now (drawn last, so plans without one replay as before)."""
    if lb.algorithm not in _HASHED:
        return None, None
    key = hash_key(lb, attrs)
    if key is None and (made := session_cookie(lb, rng)) is not None:
        return made.value, made.set_cookie
    return key, None


def _pick_destination(dests: tuple[Destination, ...], rng_value: float) -> Destination | None:
    total = sum(d.weight for d in dests)
    if total <= 0:
        return None
    point = rng_value * total
    acc = 0
    for d in dests:
        acc += d.weight
        if point < acc:
            return d
    return dests[-1]


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
