"""Cluster.pick: the single-endpoint fast path still counts in-flight requests."""

from __future__ import annotations

import random
from typing import Any

from meshlet.config.bootstrap import Address
from meshlet.proxy.pool import Cluster, EndpointPool


def _pool(port: int) -> EndpointPool:
    listener: Any = None  # pick/on_result never touch the listener
    return EndpointPool(
        address=Address(host="127.0.0.1", port=port),
        identity=None,
        listener=listener,
        ssl_context=None,
    )


def test_single_endpoint_counts_outstanding() -> None:
    pool = _pool(1)
    cluster = Cluster(name="svc", protocol="http", endpoints=(pool,))
    rng = random.Random(0)
    picks = [cluster.pick(float(i), rng) for i in range(3)]
    assert picks == [pool, pool, pool]
    assert cluster.outstanding() == {"127.0.0.1:1": 3}
    for i in range(4):  # one more result than picks must not go negative
        cluster.on_result(pool, 0.01, 200, 10.0 + i)
    assert cluster.outstanding() == {"127.0.0.1:1": 0}


def test_many_endpoints_still_balance_by_latency() -> None:
    fast, slow = _pool(1), _pool(2)
    cluster = Cluster(name="svc", protocol="http", endpoints=(fast, slow))
    rng = random.Random(0)
    now = 0.0
    for _ in range(40):  # teach the picker: port 2 is 100x slower
        pool = cluster.pick(now, rng)
        cluster.on_result(pool, 0.001 if pool is fast else 0.1, 200, now)
    assert cluster.outstanding() == {"127.0.0.1:1": 0, "127.0.0.1:2": 0}
    picked = [cluster.pick(now, rng) for _ in range(50)]
    assert picked.count(fast) > picked.count(slow)
    assert sum(cluster.outstanding().values()) == 50
