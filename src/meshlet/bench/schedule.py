"""When each request of an open-loop run is *meant* to be sent (pure code).

An open-loop generator sends at a constant rate whatever the system under test
does; a closed-loop one waits for each answer first, so when the system stalls it
stops sending and the stall hides in a handful of slow samples — coordinated
omission (Gil Tene, "How NOT to measure latency"). The fix is to give every
request an intended send time fixed in advance and to measure its latency from
that time, not from when a free connection finally carried it. This module
computes those times; the driver (``loadgen``) asks which are due.

Time is passed in (``now``), so tests drive it with ``ManualClock``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RateSpec:
    """A bounded open-loop run: ``rate_per_s`` for ``duration_s``, at most ``max_requests``."""

    rate_per_s: float
    duration_s: float
    max_requests: int

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {self.rate_per_s}")
        if not self.duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if self.max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {self.max_requests}")

    @property
    def total(self) -> int:
        """How many requests the run sends: the rate over the duration, capped."""
        return min(self.max_requests, max(1, math.floor(self.rate_per_s * self.duration_s)))


class OpenLoopSchedule:
    """Intended send times ``start + i / rate`` for ``i`` in ``[0, total)``.

    Times are computed from the index, never accumulated, so a long run does not
    drift by float error; a late caller gets every missed request at once, each
    still carrying its own intended time.

    ``warmup_requests`` come first, at the same rate, before the spec's own
    requests: index ``warmup_requests`` is the first one measured.
    """

    __slots__ = ("_interval", "_next", "_start", "_total", "warmup_requests")

    def __init__(self, spec: RateSpec, *, start_s: float, warmup_requests: int = 0) -> None:
        if warmup_requests < 0:
            raise ValueError(f"warmup_requests must be >= 0, got {warmup_requests}")
        self._interval = 1.0 / spec.rate_per_s
        self._start = start_s
        self.warmup_requests = warmup_requests
        self._total = warmup_requests + spec.total
        self._next = 0

    @property
    def total(self) -> int:
        """Every request of the run, warm-up included."""
        return self._total

    @property
    def issued(self) -> int:
        return self._next

    @property
    def done(self) -> bool:
        return self._next >= self._total

    def intended(self, i: int) -> float:
        return self._start + i * self._interval

    def next_at(self) -> float | None:
        """The intended time of the next request, or ``None`` when all were issued."""
        return None if self.done else self.intended(self._next)

    def due(self, now: float) -> list[float]:
        """Intended times of every not-yet-issued request due at ``now``; marks them issued."""
        if self.done or now < self.intended(self._next):
            return []
        last = min(self._total - 1, math.floor((now - self._start) / self._interval))
        # Guard the float edge: index ``last`` must really be due at ``now``.
        while last >= self._next and self.intended(last) > now:
            last -= 1
        times = [self.intended(i) for i in range(self._next, last + 1)]
        self._next = last + 1
        return times
