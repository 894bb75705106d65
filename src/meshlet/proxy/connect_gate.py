"""How many connection attempts one endpoint pool may have in flight, and the
line of requests that found neither an idle connection nor a free attempt.

Without a bound, a burst of N concurrent first requests to a cold pool costs N
TCP + TLS 1.3 handshakes on both sidecars before any request moves (about
1.5-2 ms of Python CPU each side per handshake), so the first request waits for
all N. With at most ``limit`` attempts in flight, the first requests move after
one handshake and the rest reuse the connections they release, or take the
next free attempt, in arrival order. Envoy bounds this per pool
(``max_connecting``), MongoDB drivers per pool (``maxConnecting``, default 2).

Pure: the pool (``proxy/pool.py``) opens the connections, arms the wait timers
and answers the requests; this class only keeps the counts and the order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["MAX_CONNECTING_PER_ENDPOINT", "ConnectGate"]

# Attempts in flight per endpoint pool. Small, because handshakes running at
# once share one event loop's CPU on each side (1 would serialise a burst behind
# one peer RTT per connection; MongoDB's maxConnecting defaults to 2). A
# documented constant: no bootstrap or DestinationRule field names this.
MAX_CONNECTING_PER_ENDPOINT = 4

T = TypeVar("T")


class ConnectGate(Generic[T]):
    """Counts attempts in flight and keeps waiters oldest first. A waiter that
    gave up (client gone, timed out) stays in the deque until it reaches the
    front, where ``alive`` drops it: removal from the middle would be O(n) on
    a path that must stay cheap, and the line is bounded by the wait timeout."""

    __slots__ = ("connecting", "limit", "line")

    def __init__(self, limit: int = MAX_CONNECTING_PER_ENDPOINT) -> None:
        if limit < 1:
            raise AssertionError(f"BUG: a connect gate needs a limit of at least 1, got {limit}")
        self.limit = limit
        self.connecting = 0
        self.line: deque[T] = deque()

    def try_connect(self) -> bool:
        """Take an attempt slot for a request that has not waited; refused while
        others are in line (they came first) or every slot is taken."""
        if self.line or self.connecting >= self.limit:
            return False
        self.connecting += 1
        return True

    def wait(self, waiter: T) -> None:
        self.line.append(waiter)

    def connect_done(self) -> None:
        """An attempt ended (connected, failed or cancelled): its slot is free."""
        if self.connecting <= 0:
            raise AssertionError("BUG: connect_done without an attempt in flight")
        self.connecting -= 1

    def next_waiter(self, alive: Callable[[T], bool]) -> T | None:
        """The oldest waiter still wanting a connection (for one just released),
        dropping those that gave up."""
        line = self.line
        while line:
            waiter = line.popleft()
            if alive(waiter):
                return waiter
        return None

    def admit_next(self, alive: Callable[[T], bool]) -> T | None:
        """The oldest live waiter, holding a slot taken for it, when one is free."""
        if self.connecting >= self.limit:
            return None
        waiter = self.next_waiter(alive)
        if waiter is not None:
            self.connecting += 1
        return waiter
