"""ClusterState: picker + outlier detection + limits working together."""

from __future__ import annotations

import random

from meshlet.clock import ManualClock
from meshlet.config.routing import LbAlgorithm, LoadBalancer, OutlierDetection, TrafficPolicy
from meshlet.traffic.balancer import Endpoint, RoundRobin
from meshlet.traffic.cluster import ClusterState, select_endpoints

EPS = [Endpoint(address=f"10.0.0.{i}:80", labels=(("version", f"v{i % 2}"),)) for i in range(4)]


def test_select_endpoints_by_subset_labels() -> None:
    assert select_endpoints(EPS, [("version", "v1")]) == [EPS[1], EPS[3]]
    assert select_endpoints(EPS, []) == EPS


def test_ejected_endpoint_gets_no_traffic_until_it_returns() -> None:
    clock = ManualClock(monotonic=0.0)
    policy = TrafficPolicy(
        load_balancer=LoadBalancer(algorithm=LbAlgorithm.ROUND_ROBIN),
        outlier_detection=OutlierDetection(
            consecutive_5xx=2, interval_s=1.0, base_ejection_time_s=3.0, max_ejection_percent=50
        ),
    )
    cluster = ClusterState(policy, EPS, clock.monotonic())
    assert isinstance(cluster.picker, RoundRobin)
    rng = random.Random(0)
    bad = EPS[0]
    ejections = []
    for _ in range(8):  # round robin: EPS[0] is chosen twice in 8 picks
        ep = cluster.choose(clock.monotonic(), rng)
        assert ep is not None
        outcome = cluster.record(ep, 0.01, 503 if ep == bad else 200, clock.monotonic())
        ejections.append(outcome.ejection)
    assert [e.endpoint for e in ejections if e is not None] == [bad.address]
    picks = {cluster.choose(clock.monotonic(), rng) for _ in range(12)}
    assert bad not in picks
    assert cluster.outstanding()[bad.address] == 0
    clock.advance(3.0)
    picks = {cluster.choose(clock.monotonic(), rng) for _ in range(12)}
    assert bad in picks


def test_retry_avoids_the_endpoint_already_tried_while_others_are_left() -> None:
    cluster = ClusterState(TrafficPolicy(), EPS[:2], 0.0)
    rng = random.Random(1)
    first = cluster.choose(0.0, rng)
    assert first is not None
    for _ in range(10):
        assert cluster.choose(0.0, rng, also_exclude=[first]) != first
    single = ClusterState(TrafficPolicy(), EPS[:1], 0.0)
    assert single.choose(0.0, rng, also_exclude=[EPS[0]]) == EPS[0]


def test_update_changes_the_endpoint_set() -> None:
    cluster = ClusterState(TrafficPolicy(outlier_detection=OutlierDetection()), EPS[:2], 0.0)
    cluster.update(EPS[2:])
    rng = random.Random(0)
    assert {cluster.choose(0.0, rng) for _ in range(20)} <= set(EPS[2:])
