"""Outlier detection (DestinationRule ``outlierDetection``) as a state machine on
the time passed in.

Envoy's semantics, which Istio configures:

- ``consecutive5xxErrors`` 5xx answers in a row (a missing response counts: a
  connect failure or reset is a 503 to the caller) eject the endpoint at once;
  ``consecutiveGatewayErrors`` does the same counting only 502/503/504 and
  missing responses. Any other answer resets the counters.
- An ejection lasts ``baseEjectionTime x number of times ejected``; every
  ``interval`` the detector returns endpoints whose time is up, and an endpoint
  that stays healthy for an interval has its ejection count lowered by one.
- At most ``maxEjectionPercent`` of the endpoints are ejected at once (at least
  one endpoint may always be ejected when the percentage allows any).
- Below ``minHealthPercent`` healthy endpoints, detection is off: every endpoint,
  ejected or not, takes traffic (``ejected()`` returns nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meshlet.config.routing import OutlierDetection

_GATEWAY = frozenset({0, 502, 503, 504})


@dataclass(frozen=True, slots=True, kw_only=True)
class Ejection:
    endpoint: str
    until: float
    reason: str  # "consecutive_5xx" | "consecutive_gateway_errors"
    times: int


class _State:
    __slots__ = ("consecutive_5xx", "consecutive_gateway", "ejected_until", "times")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.ejected_until: float | None = None
        self.times = 0


class OutlierDetector:
    """Per-cluster; endpoints are named by address."""

    def __init__(self, policy: OutlierDetection, endpoints: Sequence[str], now: float) -> None:
        self.policy = policy
        self._states: dict[str, _State] = {e: _State() for e in endpoints}
        self._next_sweep = now + policy.interval_s
        self.ejections_total = 0

    def update(self, endpoints: Sequence[str]) -> None:
        self._states = {e: self._states.get(e) or _State() for e in endpoints}

    def on_result(self, endpoint: str, status: int, now: float) -> Ejection | None:
        """Record an answer (``status`` 0: no response). Returns a new ejection."""
        state = self._states.get(endpoint)
        if state is None or state.ejected_until is not None:
            return None
        p = self.policy
        if status >= 500 or status == 0:
            state.consecutive_5xx += 1
            state.consecutive_gateway = state.consecutive_gateway + 1 if status in _GATEWAY else 0
        else:
            state.consecutive_5xx = state.consecutive_gateway = 0
            return None
        reason = ""
        if (
            p.consecutive_gateway_errors
            and state.consecutive_gateway >= p.consecutive_gateway_errors
        ):
            reason = "consecutive_gateway_errors"
        elif p.consecutive_5xx and state.consecutive_5xx >= p.consecutive_5xx:
            reason = "consecutive_5xx"
        if not reason or not self._may_eject():
            return None
        state.times += 1
        state.ejected_until = now + p.base_ejection_time_s * state.times
        state.consecutive_5xx = state.consecutive_gateway = 0
        self.ejections_total += 1
        return Ejection(
            endpoint=endpoint, until=state.ejected_until, reason=reason, times=state.times
        )

    def _may_eject(self) -> bool:
        total = len(self._states)
        ejected = sum(1 for s in self._states.values() if s.ejected_until is not None)
        # Envoy: "at least one host can always be ejected" when the percentage > 0.
        cap = max(1, total * self.policy.max_ejection_percent // 100)
        return self.policy.max_ejection_percent > 0 and ejected < cap

    def tick(self, now: float) -> list[str]:
        """Run the interval sweep if due; returns endpoints brought back."""
        back: list[str] = []
        while now >= self._next_sweep:
            sweep_at = self._next_sweep
            for name, s in self._states.items():
                if s.ejected_until is not None and sweep_at >= s.ejected_until:
                    s.ejected_until = None
                    back.append(name)
                elif s.ejected_until is None and s.times > 0:
                    s.times -= 1  # healthy for an interval: the multiplier shrinks
            self._next_sweep += self.policy.interval_s
        return back

    def next_sweep(self) -> float:
        """When the caller should call ``tick`` next."""
        return self._next_sweep

    def ejected(self) -> frozenset[str]:
        """Endpoints to exclude from load balancing now (see minHealthPercent)."""
        out = frozenset(n for n, s in self._states.items() if s.ejected_until is not None)
        if not out:
            return out
        healthy_pct = 100 * (len(self._states) - len(out)) / len(self._states)
        if healthy_pct < self.policy.min_health_percent:
            return frozenset()
        return out

    def times_ejected(self, endpoint: str) -> int:
        state = self._states.get(endpoint)
        return 0 if state is None else state.times
