"""Connection-pool limits acting as a circuit breaker (DestinationRule ``connectionPool``).

Envoy's circuit breakers are not a tripped/closed state machine: they are
counters with ceilings, and a request that would cross a ceiling fails at once
with 503 (``x-envoy-overloaded``) instead of queueing without bound. ``PoolLimits``
is that accounting, pure: the proxy asks before it connects, queues, sends or
retries, reports when each ends, and turns a refusal into a 503 whose reason
names the limit (``overflow`` counters are exposed for metrics).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshlet.config.routing import ConnectionPool


class Overflow(enum.Enum):
    """Which limit refused; the value is the reason shown to users and in metrics."""

    CONNECTIONS = "max_connections"
    PENDING = "http1_max_pending_requests"
    REQUESTS = "http2_max_requests"
    RETRIES = "max_retries"


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    overflow: Overflow | None = None

    @property
    def reason(self) -> str:
        return "" if self.overflow is None else f"upstream {self.overflow.value} overflow"


ADMIT = Admission(True)


class PoolLimits:
    """Counters and ceilings for one cluster (host + subset)."""

    __slots__ = (
        "active_requests",
        "active_retries",
        "connections",
        "limits",
        "overflows",
        "pending",
    )

    def __init__(self, limits: ConnectionPool) -> None:
        self.limits = limits
        self.connections = 0
        self.pending = 0
        self.active_requests = 0
        self.active_retries = 0
        self.overflows: dict[Overflow, int] = dict.fromkeys(Overflow, 0)

    def _refuse(self, overflow: Overflow) -> Admission:
        self.overflows[overflow] += 1
        return Admission(False, overflow)

    def try_connect(self) -> Admission:
        """Before opening a new upstream connection."""
        if self.connections >= self.limits.max_connections:
            return self._refuse(Overflow.CONNECTIONS)
        self.connections += 1
        return ADMIT

    def connection_closed(self) -> None:
        self.connections = max(0, self.connections - 1)

    def try_enqueue(self) -> Admission:
        """A request waits for a connection (none idle and none may be opened)."""
        if self.pending >= self.limits.max_pending_requests:
            return self._refuse(Overflow.PENDING)
        self.pending += 1
        return ADMIT

    def dequeued(self) -> None:
        self.pending = max(0, self.pending - 1)

    def try_start_request(self) -> Admission:
        if self.active_requests >= self.limits.max_requests:
            return self._refuse(Overflow.REQUESTS)
        self.active_requests += 1
        return ADMIT

    def request_done(self) -> None:
        self.active_requests = max(0, self.active_requests - 1)

    def try_start_retry(self) -> Admission:
        """Envoy's max_retries: concurrent retries in flight to the cluster."""
        if self.active_retries >= self.limits.max_retries:
            return self._refuse(Overflow.RETRIES)
        self.active_retries += 1
        return ADMIT

    def retry_done(self) -> None:
        self.active_retries = max(0, self.active_retries - 1)

    def reuse_connection(self, requests_served: int) -> bool:
        """May a connection that has served ``requests_served`` take another?"""
        cap = self.limits.max_requests_per_connection
        return cap == 0 or requests_served < cap

    def idle_expired(self, idle_since: float, now: float) -> bool:
        """Should an idle pooled connection be closed now?"""
        return now - idle_since >= self.limits.idle_timeout_s
