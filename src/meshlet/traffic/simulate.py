"""A pure discrete-event model of a replica pool, to compare balancers.

Used by the tests ("P2C moves load away from a 10x slower replica") and by
``benchmarks/bench_traffic.py`` (tail latency, P2C-EWMA vs round robin). Each
replica serves ``concurrency`` requests at once (a model server's batch slots)
for ``service_s`` each and queues the rest FIFO; arrivals are Poisson. Time is
simulated, so a 60-second run takes milliseconds and is exactly reproducible
from the seed of the random source passed in.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from dataclasses import dataclass, field

from meshlet.traffic.balancer import Endpoint, EndpointPicker, RandomSource


@dataclass(frozen=True, slots=True, kw_only=True)
class Replica:
    endpoint: Endpoint
    service_s: float
    concurrency: int = 4


@dataclass(slots=True)
class SimResult:
    latencies_s: list[float] = field(default_factory=list)
    picks: Counter[str] = field(default_factory=Counter)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile, ``q`` in (0, 100]."""
        ordered = sorted(self.latencies_s)
        if not ordered:
            return 0.0
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]

    def share(self, address: str) -> float:
        total = sum(self.picks.values())
        return self.picks[address] / total if total else 0.0


def simulate(
    picker: EndpointPicker,
    replicas: list[Replica],
    *,
    arrivals_per_s: float,
    requests: int,
    rng: RandomSource,
    start: float = 0.0,
) -> SimResult:
    """Send ``requests`` Poisson arrivals through ``picker``; returns latencies."""
    by_ep = {r.endpoint: r for r in replicas}
    busy: dict[Endpoint, int] = dict.fromkeys(by_ep, 0)
    queued: dict[Endpoint, deque[float]] = {e: deque() for e in by_ep}
    events: list[tuple[float, int, int, Endpoint | None, float]] = []  # t, seq, kind, ep, t0
    seq = 0
    t = start
    for _ in range(requests):
        t += -math.log(1.0 - rng.random()) / arrivals_per_s
        events.append((t, seq, 0, None, t))
        seq += 1
    heapq.heapify(events)
    result = SimResult()
    while events:
        now, _, kind, ep, t0 = heapq.heappop(events)
        if kind == 0:
            chosen = picker.pick(now, rng)
            if chosen is None:
                raise AssertionError("BUG: the simulated pool has no endpoint")
            result.picks[chosen.address] += 1
            if busy[chosen] < by_ep[chosen].concurrency:
                busy[chosen] += 1
                heapq.heappush(events, (now + by_ep[chosen].service_s, seq, 1, chosen, t0))
                seq += 1
            else:
                queued[chosen].append(t0)
            continue
        assert ep is not None
        latency = now - t0
        result.latencies_s.append(latency)
        picker.on_result(ep, latency, 200, now)
        if queued[ep]:
            nxt = queued[ep].popleft()
            heapq.heappush(events, (now + by_ep[ep].service_s, seq, 1, ep, nxt))
            seq += 1
        else:
            busy[ep] -= 1
    return result
