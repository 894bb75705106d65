"""The plan executor: the traffic engine's decisions carried out on the outbound path.

``OutboundTraffic`` holds the ``Router`` built from ``outbound.routing`` and one
``ClusterRuntime`` per ``ForwardPlan.cluster`` (``host`` or ``host|subset``):
the engine's ``ClusterState`` (picker, pool limits, outlier detector, retry
budget) over the service's endpoint pools selected by subset labels, plus a
FIFO of requests waiting for a connection slot. Hosts without routing config
never come here (``OutboundRouter`` keeps its fast path).

``OutboundTraffic.start`` finds the model name (KServe path, or a bounded peek
at an OpenAI body) and hands the request to a ``Flight`` (``flight.py``), which
plans and executes it across its attempts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping

from meshlet.config.routing import BackendKind, ConnectionPool
from meshlet.proxy.exchange import NO_BODY, Exchange, Listener
from meshlet.proxy.flight import Flight
from meshlet.proxy.mirror import MirrorSender
from meshlet.proxy.pool import Cluster, EndpointPool, PoolSettings
from meshlet.traffic.balancer import Endpoint
from meshlet.traffic.cluster import ClusterState, select_endpoints
from meshlet.traffic.inference import SlotQueue
from meshlet.traffic.model_name import (
    ModelFieldScanner,
    ScanResult,
    ScanState,
    model_from_path,
)
from meshlet.traffic.router import ForwardPlan, Router

__all__ = ["ClusterRuntime", "Flight", "OutboundTraffic", "RoutedHosts"]


class RoutedHosts:
    """Which request hosts go through the plan executor: every host with routes
    or a DestinationRule, by exact name, cluster-local short name or wildcard."""

    __slots__ = ("_exact", "_wild")

    def __init__(self, names: list[str]) -> None:
        exact: set[bytes] = set()
        wild: list[bytes] = []
        for name in names:
            if name.startswith("*"):
                wild.append(name[1:].encode("ascii"))
                continue
            exact.add(name.encode("ascii"))
            for suffix in (".svc.cluster.local", ".svc"):
                if name.endswith(suffix):
                    exact.add(name[: -len(suffix)].split(".", 1)[0].encode("ascii"))
        self._exact = frozenset(exact)
        self._wild = tuple(wild)

    def __contains__(self, host: object) -> bool:
        if host in self._exact:
            return True
        return isinstance(host, bytes) and any(host.endswith(w) for w in self._wild)


class ClusterRuntime:
    """The engine's per-cluster state plus the pools it picks among."""

    __slots__ = ("limit_per_endpoint", "name", "pools", "state", "waiting")

    def __init__(
        self,
        name: str,
        state: ClusterState,
        pools: dict[Endpoint, EndpointPool],
        limit_per_endpoint: int | None = None,
    ) -> None:
        self.name = name
        self.state = state
        self.pools = pools
        # An inference pool's meshlet.io/max-concurrency-per-endpoint (None: none).
        self.limit_per_endpoint = limit_per_endpoint
        # Requests waiting for a connection or pool slot, by criticality.
        self.waiting: SlotQueue[Flight] = SlotQueue()

    def outstanding(self) -> Mapping[str, int]:
        return self.state.outstanding()


class OutboundTraffic:
    """Routing for one outbound listener; rebuilt when the routing snapshot changes."""

    def __init__(
        self,
        router: Router,
        clusters: Mapping[bytes, Cluster],
        *,
        listener: Listener,
        rng: random.Random | None = None,
    ) -> None:
        cfg = router.config
        self.router = router
        self.listener = listener
        self.rng = rng or random.Random()
        self.hosts = RoutedHosts([*cfg.hosts, *cfg.destinations])
        self.clusters = dict(clusters)
        self.runtimes: dict[str, ClusterRuntime] = {}
        self.mirrors = MirrorSender(listener)
        # Pools of clusters with their own connection settings (closed with us).
        self.own_pools: list[EndpointPool] = []

    # -- per-cluster state ----------------------------------------------------

    def service(self, host: str) -> Cluster | None:
        """The outbound service a backend host names (full or short name)."""
        name = host.encode("ascii", "replace")
        found = self.clusters.get(name)
        if found is None:
            for suffix in (b".svc.cluster.local", b".svc"):
                if name.endswith(suffix):
                    found = self.clusters.get(name[: -len(suffix)].split(b".", 1)[0])
                    break
        return found

    def _pools(self, plan: ForwardPlan) -> list[EndpointPool]:
        backend = plan.backend
        if backend.kind is BackendKind.INFERENCE_POOL:
            # A pool selects by labels; a service named like the pool narrows the
            # candidates, else every HTTP service's endpoints are candidates.
            svc = self.service(backend.host)
            cands = (
                list(svc.endpoints)
                if svc is not None
                else [p for c in self.clusters.values() for p in c.endpoints]
            )
            labels = plan.inference.selector if plan.inference is not None else ()
        else:
            svc = self.service(backend.host)
            if svc is None:
                return []
            cands = list(svc.endpoints)
            labels = self.router.subset_labels(backend.host, backend.subset)
        wanted = {e.address for e in select_endpoints([p.key for p in cands], labels)}
        return [p for p in cands if p.key.address in wanted]

    def runtime(self, plan: ForwardPlan) -> ClusterRuntime:
        name = plan.cluster
        rt = self.runtimes.get(name)
        if rt is None:
            pools = self._pools(plan)
            settings = _pool_settings(plan.policy.connection_pool)
            if settings is not None:
                pools = [p.with_settings(settings) for p in pools]
                self.own_pools.extend(pools)
            by_key = {p.key: p for p in reversed(pools)}
            state = ClusterState(plan.policy, list(by_key), self.listener.now)
            inference = plan.inference
            limit = None if inference is None else inference.max_concurrency_per_endpoint
            rt = self.runtimes[name] = ClusterRuntime(name, state, by_key, limit)
        return rt

    def update_clusters(self, clusters: Mapping[bytes, Cluster]) -> None:
        """New endpoint set (dynamic mode): clusters are rebuilt on next use, keeping
        nothing but the limits' meaning; in-flight requests finish on old state."""
        self.clusters = dict(clusters)
        self.runtimes = {}
        for pool in self.own_pools:  # in-flight ones close at their idle deadline
            for conn in list(pool.idle):
                conn.close()
        self.own_pools = []

    def shortest_timeout_s(self) -> float:
        """The shortest route deadline (total, per try, stream idle), so the
        server's deadline sweep runs often enough to honour it."""
        shortest = float("inf")
        for hr in self.router.config.hosts.values():
            for route in hr.routes:
                for t in (
                    route.timeout_s,
                    route.retries.per_try_timeout_s,
                    route.stream_idle_timeout_s,
                ):
                    if t is not None and t > 0:
                        shortest = min(shortest, t)
        return shortest

    def close(self) -> None:
        self.mirrors.close()
        for pool in self.own_pools:
            pool.close()
        for rt in self.runtimes.values():
            for flight in list(rt.waiting):
                if flight.timer is not None:
                    flight.timer.cancel()
            rt.waiting.clear()

    def outstanding(self) -> Iterator[tuple[str, str, int]]:
        """(cluster, endpoint address, in-flight requests) for metrics."""
        for name, rt in self.runtimes.items():
            for address, n in rt.outstanding().items():
                yield name, address, n

    # -- the request path -----------------------------------------------------

    def start(self, ex: Exchange, host: bytes, target: bytes, extra: list[bytes]) -> None:
        flight = Flight(self, ex, host.decode("ascii", "replace"), target, extra)
        ex.ctl = flight
        early = ex.pending or []
        if early:
            flight.received_before_start(early)
        path = target.partition(b"?")[0].decode("latin-1")
        model = model_from_path(path)
        if model is None and _peek_body_for_model(ex):
            scanner = ModelFieldScanner()
            found = ScanResult(ScanState.NEED_MORE)
            for part in early:
                found = scanner.feed(part)
                if found.state is not ScanState.NEED_MORE:
                    break
            if found.state is ScanState.NEED_MORE and ex.req_done:
                found = scanner.feed(b"", end=True)
            if found.state is ScanState.NEED_MORE:
                flight.scanner = scanner
                return  # routed once the scanner decides (on_body / on_request_end)
            model = found.model if found.state is ScanState.FOUND else None
            flight.model_span = found.span  # the parts it lies in are in ex.pending
        flight.route(model)


_DEFAULT_POOL = ConnectionPool()


def _pool_settings(cp: ConnectionPool) -> PoolSettings | None:
    """The connection settings a DestinationRule set, for a cluster's own pools;
    None when it set none (the cluster shares the service's pools). A value
    equal to Istio's default counts as unset: the bootstrap's ``timeouts``
    (connect_s, idle_s) then apply, as they do to unrouted services."""
    connect, idle = cp.connect_timeout_s, cp.idle_timeout_s
    settings = PoolSettings(
        connect_timeout_s=None if connect == _DEFAULT_POOL.connect_timeout_s else connect,
        idle_timeout_s=None if idle == _DEFAULT_POOL.idle_timeout_s else idle,
        max_requests_per_connection=cp.max_requests_per_connection,
    )
    return None if settings == PoolSettings() else settings


def _peek_body_for_model(ex: Exchange) -> bool:
    """A JSON body may name the model (OpenAI API). Not with Expect: 100-continue:
    the client waits for the 100 before sending the body we would wait for."""
    if ex.framing == NO_BODY or ex.expect or ex.upgrade is not None:
        return False
    for name, value in ex.headers:
        if name == b"content-type":
            return b"json" in value.lower()
    return False
