"""Endpoint pickers on a fake clock and seeded randomness."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from meshlet.clock import ManualClock
from meshlet.config.routing import LbAlgorithm, LoadBalancer
from meshlet.traffic.balancer import (
    DEFAULT_RTT_S,
    ConsistentHash,
    Endpoint,
    LeastRequest,
    P2CEwma,
    RandomPick,
    RoundRobin,
    hash_key,
    make_picker,
)
from meshlet.traffic.match import RequestAttributes
from meshlet.traffic.simulate import Replica, simulate

EPS = [Endpoint(address=f"10.0.0.{i}:80") for i in range(4)]


def test_round_robin_cycles_and_skips_excluded() -> None:
    rr = RoundRobin(EPS)
    rng = random.Random(0)
    assert [rr.pick(0.0, rng) for _ in range(5)] == [*EPS, EPS[0]]
    picks = {rr.pick(0.0, rng, exclude={EPS[1]}) for _ in range(6)}
    assert EPS[1] not in picks
    assert rr.pick(0.0, rng, exclude=set(EPS)) is None


def test_random_is_uniform_within_binomial_bound() -> None:
    picker = RandomPick(EPS)
    rng = random.Random(42)
    n = 4000
    counts = Counter(picker.pick(0.0, rng) for _ in range(n))
    bound = 5 * math.sqrt(n * 0.25 * 0.75)
    assert all(abs(counts[e] - n / 4) <= bound for e in EPS)


def test_outstanding_counts_rise_on_pick_and_fall_on_result() -> None:
    picker = RoundRobin(EPS[:2])
    rng = random.Random(0)
    a = picker.pick(0.0, rng)
    b = picker.pick(0.0, rng)
    c = picker.pick(0.0, rng)
    assert a is not None
    assert b is not None
    assert c is not None
    assert picker.outstanding() == {EPS[0].address: 2, EPS[1].address: 1}
    picker.on_result(a, 0.01, 200, 1.0)
    assert picker.outstanding_of(EPS[0]) == 1


def test_least_request_prefers_fewer_outstanding() -> None:
    picker = LeastRequest(EPS[:2])
    rng = random.Random(3)
    for _ in range(5):
        picker._stats[EPS[0]].outstanding += 1  # EPS[0] is busy
    picks = Counter(picker.pick(0.0, rng) for _ in range(4))
    assert picks[EPS[1]] == 4


def test_p2c_prefers_lower_latency_times_load() -> None:
    clock = ManualClock()
    picker = P2CEwma(EPS[:2])
    rng = random.Random(1)
    fast, slow = EPS[0], EPS[1]
    # Teach it: slow answers in 1 s, fast in 10 ms.
    for ep, latency in ((slow, 1.0), (fast, 0.01)):
        picker._stats[ep].outstanding += 1
        picker.on_result(ep, latency, 200, clock.monotonic())
    assert picker.ewma_s(slow, clock.monotonic()) == pytest.approx(1.0)
    assert [picker.pick(clock.monotonic(), rng) for _ in range(3)] == [fast] * 3
    assert picker.cost(fast, clock.monotonic()) == pytest.approx(0.01 * 4)


def test_p2c_ewma_is_peak_sensitive_and_decays() -> None:
    picker = P2CEwma([EPS[0]])
    ep = EPS[0]
    picker._stats[ep].outstanding = 3
    picker.on_result(ep, 0.5, 200, 100.0)  # above the prior: taken at once
    assert picker.ewma_s(ep, 100.0) == pytest.approx(0.5)
    picker.on_result(ep, 0.1, 200, 110.0)  # 10 s later: weight e^-1 on the old value
    expected = 0.5 * math.exp(-1) * math.exp(-0) * 1.0
    # decay to 0.5/e first, then blend with 0.1 at weight e^0 = 1 (no time passed since).
    assert picker.ewma_s(ep, 110.0) == pytest.approx(expected)
    assert picker.ewma_s(ep, 130.0) == pytest.approx(expected * math.exp(-2))


def test_p2c_failure_is_not_taken_as_fast() -> None:
    picker = P2CEwma([EPS[0]])
    picker._stats[EPS[0]].outstanding = 1
    picker.on_result(EPS[0], 0.0001, 503, 1.0)
    assert picker.ewma_s(EPS[0], 1.0) >= 2 * DEFAULT_RTT_S


def test_p2c_moves_load_away_from_a_10x_slower_replica() -> None:
    fast, slow = Endpoint(address="fast:1"), Endpoint(address="slow:1")
    replicas = [Replica(endpoint=fast, service_s=0.010), Replica(endpoint=slow, service_s=0.100)]
    p2c = simulate(
        P2CEwma([fast, slow]), replicas, arrivals_per_s=150, requests=3000, rng=random.Random(11)
    )
    rr = simulate(
        RoundRobin([fast, slow]), replicas, arrivals_per_s=150, requests=3000, rng=random.Random(11)
    )
    assert rr.share("slow:1") == pytest.approx(0.5)
    assert p2c.share("slow:1") < 0.10
    assert p2c.percentile(99) < rr.percentile(99) / 10


def test_p2c_retries_a_recovered_replica_after_decay() -> None:
    picker = P2CEwma(EPS[:2])
    rng = random.Random(5)
    picker._stats[EPS[1]].outstanding = 1
    picker.on_result(EPS[1], 5.0, 200, 0.0)  # very slow once
    early = Counter(picker.pick(1.0, rng) for _ in range(20))
    for ep, n in early.items():
        assert ep is not None
        for _ in range(n):
            picker.on_result(ep, 0.01, 200, 1.0)
    assert early[EPS[1]] == 0
    # Traffic keeps refreshing the fast replica's estimate (10 ms) while the slow
    # one's unobserved estimate decays: 5 s * e^-12 ~ 30 us, so it is tried again.
    picker._stats[EPS[0]].outstanding += 1
    picker.on_result(EPS[0], 0.01, 200, 119.9)
    late = Counter(picker.pick(120.0, rng) for _ in range(20))
    assert late[EPS[1]] > 0


def test_ring_hash_is_sticky_and_moves_only_the_excluded_keys() -> None:
    picker = ConsistentHash(EPS, ring_size=1024)
    rng = random.Random(0)
    keys = [f"user-{i}" for i in range(400)]
    first = {k: picker.pick(0.0, rng, hash_key=k) for k in keys}
    again = {k: picker.pick(0.0, rng, hash_key=k) for k in keys}
    assert first == again
    assert len(set(first.values())) == 4
    moved = {k: picker.pick(0.0, rng, hash_key=k, exclude={EPS[2]}) for k in keys}
    changed = [k for k in keys if moved[k] != first[k]]
    assert changed
    assert all(first[k] == EPS[2] for k in changed)


def test_maglev_spreads_evenly_and_is_sticky() -> None:
    picker = ConsistentHash(EPS, maglev=True, table_size=251)
    rng = random.Random(0)
    counts = Counter(picker.pick(0.0, rng, hash_key=f"k{i}") for i in range(4000))
    assert all(700 < counts[e] < 1300 for e in EPS)
    assert picker.pick(0.0, rng, hash_key="k1") == picker.pick(0.0, rng, hash_key="k1")
    first = picker.pick(0.0, rng, hash_key="k1")
    assert first is not None
    moved = picker.pick(0.0, rng, hash_key="k1", exclude={first})
    assert moved is not None
    assert moved != first


def test_consistent_hash_without_key_falls_back_to_random() -> None:
    picker = ConsistentHash(EPS)
    rng = random.Random(2)
    assert len({picker.pick(0.0, rng) for _ in range(50)}) > 1


def test_update_keeps_stats_of_endpoints_that_stay() -> None:
    picker = P2CEwma(EPS[:2])
    picker.pick(0.0, random.Random(0))
    before = dict(picker.outstanding())
    picker.update([*EPS[:2], EPS[3]])
    assert picker.outstanding()[EPS[3].address] == 0
    assert sum(picker.outstanding().values()) == sum(before.values())


@pytest.mark.parametrize(
    ("algorithm", "cls"),
    [
        (LbAlgorithm.ROUND_ROBIN, RoundRobin),
        (LbAlgorithm.RANDOM, RandomPick),
        (LbAlgorithm.LEAST_REQUEST, LeastRequest),
        (LbAlgorithm.P2C_EWMA, P2CEwma),
        (LbAlgorithm.RING_HASH, ConsistentHash),
        (LbAlgorithm.MAGLEV, ConsistentHash),
    ],
)
def test_make_picker(algorithm: LbAlgorithm, cls: type) -> None:
    assert isinstance(make_picker(LoadBalancer(algorithm=algorithm), EPS), cls)


def test_hash_keys_from_header_cookie_and_source_ip() -> None:
    a = RequestAttributes.build(
        host="h",
        method="GET",
        target="/",
        headers={"X-User": "u1", "Cookie": "a=b; sid=s9"},
        source_ip="10.1.1.1",
    )
    assert hash_key(LoadBalancer(hash_header="x-user"), a) == "u1"
    assert hash_key(LoadBalancer(hash_cookie="sid"), a) == "s9"
    assert hash_key(LoadBalancer(hash_cookie="nope"), a) is None
    assert hash_key(LoadBalancer(hash_source_ip=True), a) == "10.1.1.1"
    assert hash_key(LoadBalancer(), a) is None
