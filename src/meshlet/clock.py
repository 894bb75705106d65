"""Time as a parameter.

Pure code never reads a clock; it is handed one (or a timestamp). Production code
uses ``MonotonicClock``; tests use ``ManualClock`` and move time by hand, so no
test sleeps and no test depends on the machine's speed.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """The two readings meshlet needs: a monotonic one for durations and deadlines,
    and the wall clock for certificate validity and log timestamps."""

    def monotonic(self) -> float: ...

    def wall(self) -> float: ...


class MonotonicClock:
    """The real clock."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()  # noqa: TID251 - the one place that reads the wall clock


class ManualClock:
    """A clock that moves only when told to; both readings move together."""

    __slots__ = ("_mono", "_wall")

    def __init__(self, *, monotonic: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._mono = monotonic
        self._wall = wall

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds})")
        self._mono += seconds
        self._wall += seconds
