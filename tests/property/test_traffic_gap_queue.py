"""Property: requests that wait for an inference pool leave the line without ever
putting an endpoint past its concurrency limit, Critical before Standard before
Sheddable, and no Sheddable request waits while the pool is full.

The simulation plays the sidecar's part (``proxy.flight``) with the pure pieces
it uses: ``admit`` on arrival, ``SlotQueue`` for the line, ``SlotQueue.release``
whenever a slot may have freed, ``ClusterState.choose`` with the pool limit, and
``ClusterState.record`` at the end of each request, on a manual clock."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet.clock import ManualClock
from meshlet.config.inference import Criticality
from meshlet.config.routing import TrafficPolicy
from meshlet.traffic.balancer import Endpoint
from meshlet.traffic.cluster import ClusterState
from meshlet.traffic.inference import Admit, SlotQueue, admit, free_slots

RANK = {Criticality.CRITICAL: 0, Criticality.STANDARD: 1, Criticality.SHEDDABLE: 2}


@dataclass
class Sim:
    endpoints: int
    limit: int
    max_connections: int
    seed: int
    clock: ManualClock = field(default_factory=ManualClock)
    line: SlotQueue[tuple[int, Criticality]] = field(default_factory=SlotQueue)
    inflight: list[Endpoint] = field(default_factory=list)
    shed: list[int] = field(default_factory=list)
    next_id: int = 0

    def __post_init__(self) -> None:
        eps = [Endpoint(address=f"10.0.0.{i}:80") for i in range(self.endpoints)]
        self.state = ClusterState(TrafficPolicy(), eps, self.clock.monotonic())
        self.rng = random.Random(self.seed)

    def counts(self) -> list[int]:
        picker = self.state.picker
        return [picker.outstanding_of(e) for e in picker.endpoints]

    def arrive(self, crit: Criticality) -> None:
        self.next_id += 1
        verdict = admit(crit, self.counts(), self.limit)
        if verdict is Admit.SHED:
            assert free_slots(self.counts(), self.limit) == 0
            self.shed.append(self.next_id)
            return
        full = len(self.inflight) >= self.max_connections
        if self.line or verdict is Admit.QUEUE or full:
            self.line.push((self.next_id, crit), crit)
            self.release()
        else:
            self.start()

    def release(self) -> None:
        while self.line:
            free = self.max_connections - len(self.inflight)
            out = self.line.release(self.counts(), self.limit, free)
            self.shed.extend(i for i, _ in out.shed)
            assert all(c is Criticality.SHEDDABLE for _, c in out.shed)
            for _, sent in out.send:
                # Nobody left in line outranks a request that was let go.
                assert all(RANK[c] >= RANK[sent] for _, c in self.line)
                self.start()
            if not out.send:
                return

    def start(self) -> None:
        ep = self.state.choose(self.clock.monotonic(), self.rng, limit_per_endpoint=self.limit)
        assert ep is not None, "released a request with no endpoint below the limit"
        self.inflight.append(ep)

    def finish(self, pick: int) -> None:
        if not self.inflight:
            return
        ep = self.inflight.pop(pick % len(self.inflight))
        self.clock.advance(0.05)
        self.state.record(ep, 0.05, 200, self.clock.monotonic())
        self.release()

    def check(self) -> None:
        assert len(self.line) == len(list(self.line))  # the kept size is the true one
        counts = self.counts()
        assert all(c <= self.limit for c in counts), counts
        assert len(self.inflight) <= self.max_connections
        free = free_slots(counts, self.limit) or 0
        room = min(free, self.max_connections - len(self.inflight))
        assert not (self.line and room > 0), "a request waits while it could go"
        if free == 0:
            assert all(c is not Criticality.SHEDDABLE for _, c in self.line)


OPS = st.lists(
    st.one_of(
        st.sampled_from(list(Criticality)).map(lambda c: ("arrive", c)),
        st.integers(0, 50).map(lambda i: ("finish", i)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    endpoints=st.integers(1, 4),
    limit=st.integers(1, 3),
    max_connections=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    ops=OPS,
)
def test_line_keeps_every_endpoint_within_its_limit_and_serves_by_criticality(
    endpoints: int,
    limit: int,
    max_connections: int,
    seed: int,
    ops: list[tuple[str, object]],
) -> None:
    sim = Sim(endpoints, limit, max_connections, seed)
    for op, arg in ops:
        if op == "arrive":
            assert isinstance(arg, Criticality)
            sim.arrive(arg)
        else:
            assert isinstance(arg, int)
            sim.finish(arg)
        sim.check()
    while sim.inflight:  # drain: everyone who waited is served or shed
        sim.finish(0)
        sim.check()
    assert len(sim.line) == 0
