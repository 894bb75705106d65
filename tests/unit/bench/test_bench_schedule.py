"""Open-loop intended send times, driven by ManualClock (no sleeps)."""

from __future__ import annotations

import itertools

import pytest

from meshlet.bench.schedule import OpenLoopSchedule, RateSpec
from meshlet.clock import ManualClock


def test_requests_are_due_at_their_intended_times() -> None:
    clock = ManualClock()
    sched = OpenLoopSchedule(
        RateSpec(rate_per_s=100.0, duration_s=1.0, max_requests=10_000),
        start_s=clock.monotonic(),
    )
    start = clock.monotonic()
    assert sched.due(clock.monotonic()) == [start]
    assert sched.due(clock.monotonic()) == []  # nothing new until time moves
    clock.advance(0.005)
    assert sched.due(clock.monotonic()) == []
    clock.advance(0.0051)  # a hair past 10 ms: 0.005 + 0.005 is not 0.01 in floats
    assert sched.due(clock.monotonic()) == [pytest.approx(start + 0.01)]
    assert sched.next_at() == pytest.approx(start + 0.02)


def test_a_late_caller_gets_every_missed_request_with_its_own_time() -> None:
    """Coordinated omission: a stall must not swallow the requests it delayed."""
    clock = ManualClock()
    start = clock.monotonic()
    sched = OpenLoopSchedule(
        RateSpec(rate_per_s=1000.0, duration_s=1.0, max_requests=10_000), start_s=start
    )
    clock.advance(0.0505)  # the driver was stuck for 50 ms
    due = sched.due(clock.monotonic())
    assert len(due) == 51
    assert due[0] == start
    assert due[-1] == pytest.approx(start + 0.050)
    assert all(b > a for a, b in itertools.pairwise(due))


def test_total_is_rate_times_duration_capped_by_max_requests() -> None:
    assert RateSpec(rate_per_s=1000.0, duration_s=2.5, max_requests=10**6).total == 2500
    assert RateSpec(rate_per_s=1000.0, duration_s=2.5, max_requests=700).total == 700
    assert RateSpec(rate_per_s=0.1, duration_s=1.0, max_requests=10).total == 1


def test_schedule_ends_after_total_and_times_do_not_drift() -> None:
    clock = ManualClock()
    start = clock.monotonic()
    spec = RateSpec(rate_per_s=3.0, duration_s=1000.0, max_requests=10**6)
    sched = OpenLoopSchedule(spec, start_s=start)
    seen: list[float] = []
    while not sched.done:
        clock.advance(0.25)
        seen.extend(sched.due(clock.monotonic()))
    assert len(seen) == 3000 == sched.issued
    assert seen[-1] == pytest.approx(start + 2999 / 3.0, abs=1e-9)
    assert sched.next_at() is None
    assert sched.due(clock.monotonic() + 10) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"rate_per_s": 0.0, "duration_s": 1.0, "max_requests": 1}, id="zero-rate"),
        pytest.param({"rate_per_s": 1.0, "duration_s": -1.0, "max_requests": 1}, id="neg-duration"),
        pytest.param({"rate_per_s": 1.0, "duration_s": 1.0, "max_requests": 0}, id="no-requests"),
    ],
)
def test_bad_specs_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateSpec(**kwargs)  # type: ignore[arg-type]
