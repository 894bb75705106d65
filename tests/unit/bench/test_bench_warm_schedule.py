"""Warm-up requests come first in the open-loop schedule, at the same rate."""

from __future__ import annotations

import pytest

from meshlet.bench.schedule import OpenLoopSchedule, RateSpec
from meshlet.clock import ManualClock


def test_warmup_requests_precede_the_measured_ones_at_the_same_rate() -> None:
    clock = ManualClock()
    start = clock.monotonic()
    spec = RateSpec(rate_per_s=100.0, duration_s=1.0, max_requests=10_000)
    sched = OpenLoopSchedule(spec, start_s=start, warmup_requests=50)
    assert sched.total == 150
    assert sched.warmup_requests == 50
    # The first measured request (index 50) is due half a second in, one interval
    # after the last warm-up request: the rate does not change at the boundary.
    assert sched.intended(50) - sched.intended(49) == pytest.approx(0.01)
    assert sched.intended(50) == pytest.approx(start + 0.5)
    clock.advance(0.4955)
    assert len(sched.due(clock.monotonic())) == 50  # indices 0..49: the warm-up
    clock.advance(0.01)
    assert sched.due(clock.monotonic()) == [pytest.approx(start + 0.5)]


def test_without_warmup_the_schedule_is_unchanged() -> None:
    spec = RateSpec(rate_per_s=1000.0, duration_s=2.0, max_requests=10_000)
    assert OpenLoopSchedule(spec, start_s=0.0).total == spec.total == 2000


def test_the_schedule_ends_after_warmup_plus_measured_requests() -> None:
    clock = ManualClock()
    spec = RateSpec(rate_per_s=10.0, duration_s=0.3, max_requests=10_000)
    sched = OpenLoopSchedule(spec, start_s=clock.monotonic(), warmup_requests=2)
    clock.advance(10.0)
    assert len(sched.due(clock.monotonic())) == 5
    assert sched.done
    assert sched.next_at() is None


def test_negative_warmup_is_refused() -> None:
    spec = RateSpec(rate_per_s=10.0, duration_s=1.0, max_requests=10)
    with pytest.raises(ValueError, match="warmup_requests must be >= 0, got -1"):
        OpenLoopSchedule(spec, start_s=0.0, warmup_requests=-1)
