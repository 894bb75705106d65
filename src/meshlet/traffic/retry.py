"""When to retry: ``retryOn`` classification, safe-to-replay checks and the retry budget.

A retry is sent only if all of these hold, checked in this order so the reason
returned is the most useful one:

1. the route allows another attempt (``retries.attempts``);
2. the outcome is retriable under ``retryOn`` (Envoy's definitions below);
3. the request can be replayed: its body was not streamed past the retry buffer
   (``RETRY_BUFFER_BYTES``, 64 KiB as in Envoy's and Linkerd's defaults) — past
   that point the bytes are gone and a retry would send a truncated body;
4. the retry budget has room.

The budget is Finagle's and Linkerd's: retries may add at most ``ratio`` (20 %)
to the requests of the last ``ttl_s`` (10 s), plus ``min_per_s`` (10) retries per
second so a quiet service can still retry. Per-request attempt limits alone let
an overloaded model server receive 3x its load at exactly the wrong moment;
the budget caps the extra load for the whole cluster.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from meshlet.config.routing import RetryPolicy

RETRY_BUFFER_BYTES = 64 * 1024


class Failure(enum.Enum):
    """An attempt that produced no response."""

    CONNECT_FAILURE = "connect-failure"
    RESET = "reset"  # disconnect / reset / read timeout after connecting
    REFUSED_STREAM = "refused-stream"  # HTTP/2 REFUSED_STREAM: nothing was processed
    PER_TRY_TIMEOUT = "per-try-timeout"


def is_retriable(policy: RetryPolicy, status: int | None, failure: Failure | None) -> bool:
    """Envoy's ``x-envoy-retry-on`` semantics for the tokens Istio passes through."""
    on = policy.retry_on
    if failure is not None:
        # Envoy retries every upstream reset under 5xx and gateway-error ("or does not
        # respond at all (disconnect/reset/read timeout)").
        if "5xx" in on or "gateway-error" in on:
            return True
        if failure is Failure.CONNECT_FAILURE:
            return "connect-failure" in on
        if failure is Failure.REFUSED_STREAM:
            return "refused-stream" in on
        return "reset" in on
    if status is None:
        return False
    if status >= 500 and "5xx" in on:
        return True
    if status in (502, 503, 504) and "gateway-error" in on:
        return True
    if status == 409 and "retriable-4xx" in on:
        return True
    return str(status) in on


class RetryBudget:
    """Sliding-window budget over one-second buckets (pure: times passed in)."""

    __slots__ = ("_buckets", "min_per_s", "ratio", "ttl_s")

    def __init__(self, *, ratio: float = 0.2, min_per_s: float = 10.0, ttl_s: int = 10) -> None:
        # Defaults are Linkerd's retry budget (retryRatio 0.2, minRetriesPerSecond 10,
        # ttl 10s), which come from Finagle's RetryBudget.
        if not 0 <= ratio <= 1000 or min_per_s < 0 or ttl_s < 1:
            raise ValueError(f"bad retry budget ratio={ratio} min_per_s={min_per_s} ttl_s={ttl_s}")
        self.ratio, self.min_per_s, self.ttl_s = ratio, min_per_s, ttl_s
        self._buckets: deque[list[int]] = deque()  # [second, requests, retries]

    def _bucket(self, now: float) -> list[int]:
        second = int(now)
        while self._buckets and self._buckets[0][0] <= second - self.ttl_s:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]

    def record_request(self, now: float) -> None:
        """Every original request deposits into the budget."""
        self._bucket(now)[1] += 1

    def balance(self, now: float) -> float:
        self._bucket(now)
        requests = sum(b[1] for b in self._buckets)
        retries = sum(b[2] for b in self._buckets)
        return self.min_per_s * self.ttl_s + self.ratio * requests - retries

    def try_withdraw(self, now: float) -> bool:
        """Take one retry if the budget has it."""
        if self.balance(now) < 1:
            return False
        self._buckets[-1][2] += 1
        return True


class Verdict(enum.Enum):
    RETRY = "retry"
    NO_ATTEMPTS_LEFT = "attempts exhausted"
    NOT_RETRIABLE = "outcome not retriable under retryOn"
    BODY_STREAMED = "request body streamed past the retry buffer"
    BUDGET_EXHAUSTED = "retry budget exhausted"


@dataclass(frozen=True, slots=True)
class RetryDecision:
    verdict: Verdict

    @property
    def retry(self) -> bool:
        return self.verdict is Verdict.RETRY


def decide_retry(
    policy: RetryPolicy,
    *,
    retries_done: int,
    status: int | None = None,
    failure: Failure | None = None,
    body_bytes_sent: int = 0,
    body_complete: bool = True,
    budget: RetryBudget | None = None,
    now: float = 0.0,
    buffer_bytes: int = RETRY_BUFFER_BYTES,
) -> RetryDecision:
    """Whether the attempt just finished (``status`` or ``failure``) is retried.
    ``body_bytes_sent`` counts request body bytes already handed upstream; the
    body is replayable if they all still sit in the retry buffer."""
    if retries_done >= policy.attempts:
        return RetryDecision(Verdict.NO_ATTEMPTS_LEFT)
    if not is_retriable(policy, status, failure):
        return RetryDecision(Verdict.NOT_RETRIABLE)
    if body_bytes_sent > buffer_bytes or (not body_complete and body_bytes_sent >= buffer_bytes):
        return RetryDecision(Verdict.BODY_STREAMED)
    if budget is not None and not budget.try_withdraw(now):
        return RetryDecision(Verdict.BUDGET_EXHAUSTED)
    return RetryDecision(Verdict.RETRY)
