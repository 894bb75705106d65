"""Per-cluster state in one object: picker, pool limits, outlier detector, retry budget.

The proxy keeps one ``ClusterState`` per ``ForwardPlan.cluster`` (``host`` or
``host|subset``) and rebuilds it when the routing snapshot or the endpoint set
changes. Every method is pure bookkeeping on the time passed in; the proxy does
the I/O and turns refusals into responses.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from meshlet.config.routing import TrafficPolicy
from meshlet.traffic.balancer import Endpoint, EndpointPicker, RandomSource, make_picker
from meshlet.traffic.breaker import PoolLimits
from meshlet.traffic.outlier import Ejection, OutlierDetector
from meshlet.traffic.retry import RetryBudget


def select_endpoints(
    endpoints: Iterable[Endpoint], labels: Collection[tuple[str, str]]
) -> list[Endpoint]:
    """The endpoints a subset's labels select (all of them for no labels)."""
    return [e for e in endpoints if e.has_labels(labels)]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What recording a result changed, for the caller to log and count."""

    ejection: Ejection | None


class ClusterState:
    __slots__ = ("budget", "limits", "outlier", "picker", "policy")

    def __init__(self, policy: TrafficPolicy, endpoints: Iterable[Endpoint], now: float) -> None:
        eps = list(endpoints)
        self.policy = policy
        self.picker: EndpointPicker = make_picker(policy.load_balancer, eps)
        self.limits = PoolLimits(policy.connection_pool)
        self.outlier = (
            None
            if policy.outlier_detection is None
            else OutlierDetector(policy.outlier_detection, [e.address for e in eps], now)
        )
        self.budget = RetryBudget()

    def update(self, endpoints: Iterable[Endpoint]) -> None:
        eps = list(endpoints)
        self.picker.update(eps)
        if self.outlier is not None:
            self.outlier.update([e.address for e in eps])

    def choose(
        self,
        now: float,
        rng: RandomSource,
        hash_key: str | None = None,
        also_exclude: Collection[Endpoint] = (),
        limit_per_endpoint: int | None = None,
    ) -> Endpoint | None:
        """A healthy endpoint (None: every endpoint is ejected or excluded -> 503).
        ``also_exclude``: endpoints already tried by this request's earlier attempts;
        they are avoided only while another endpoint is left. ``limit_per_endpoint``
        (an inference pool's concurrency limit): endpoints at it are never chosen."""
        if self.outlier is not None:
            self.outlier.tick(now)
            ejected = self.outlier.ejected()
        else:
            ejected = frozenset()
        picker = self.picker
        exclude = {e for e in picker.endpoints if e.address in ejected}
        if limit_per_endpoint is not None:
            exclude.update(
                e for e in picker.endpoints if picker.outstanding_of(e) >= limit_per_endpoint
            )
        if also_exclude:
            wider = exclude | set(also_exclude)
            if len(wider) < len(picker.endpoints):
                exclude = wider
        return picker.pick(now, rng, hash_key=hash_key, exclude=exclude)

    def record(self, endpoint: Endpoint, latency_s: float, status: int, now: float) -> Outcome:
        """One attempt ended: ``status`` 0 = no response (connect failure, reset, timeout)."""
        self.picker.on_result(endpoint, latency_s, status, now)
        ejection = None
        if self.outlier is not None:
            ejection = self.outlier.on_result(endpoint.address, status, now)
        return Outcome(ejection)

    def outstanding(self) -> Mapping[str, int]:
        """In-flight requests per endpoint address (``meshlet_endpoint_outstanding``)."""
        return self.picker.outstanding()
