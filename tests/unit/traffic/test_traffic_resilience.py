"""Circuit breaking (pool limits), outlier detection, retry policy and budget."""

from __future__ import annotations

import pytest

from meshlet.clock import ManualClock
from meshlet.config.routing import ConnectionPool, OutlierDetection, RetryPolicy
from meshlet.traffic.breaker import Overflow, PoolLimits
from meshlet.traffic.outlier import OutlierDetector
from meshlet.traffic.retry import (
    RETRY_BUFFER_BYTES,
    Failure,
    RetryBudget,
    Verdict,
    decide_retry,
    is_retriable,
)

# ------------------------------------------------------------------ pool limits


def test_pending_overflow_refuses_with_reason_and_counts() -> None:
    limits = PoolLimits(ConnectionPool(max_pending_requests=2))
    assert limits.try_enqueue().admitted
    assert limits.try_enqueue().admitted
    refused = limits.try_enqueue()
    assert not refused.admitted
    assert refused.overflow is Overflow.PENDING
    assert refused.reason == "upstream http1_max_pending_requests overflow"
    assert limits.overflows[Overflow.PENDING] == 1
    limits.dequeued()
    assert limits.try_enqueue().admitted


def test_connection_request_and_retry_ceilings() -> None:
    limits = PoolLimits(ConnectionPool(max_connections=1, max_requests=1, max_retries=0))
    assert limits.try_connect().admitted
    assert limits.try_connect().overflow is Overflow.CONNECTIONS
    limits.connection_closed()
    assert limits.try_connect().admitted
    assert limits.try_start_request().admitted
    assert limits.try_start_request().overflow is Overflow.REQUESTS
    limits.request_done()
    assert limits.try_start_request().admitted
    assert limits.try_start_retry().overflow is Overflow.RETRIES


def test_max_requests_per_connection_and_idle_timeout() -> None:
    limits = PoolLimits(ConnectionPool(max_requests_per_connection=3, idle_timeout_s=30.0))
    assert limits.reuse_connection(2)
    assert not limits.reuse_connection(3)
    assert PoolLimits(ConnectionPool()).reuse_connection(10**6)  # 0 = unlimited
    clock = ManualClock()
    idle_since = clock.monotonic()
    clock.advance(29.9)
    assert not limits.idle_expired(idle_since, clock.monotonic())
    clock.advance(0.1)
    assert limits.idle_expired(idle_since, clock.monotonic())


# ------------------------------------------------------------- outlier detection

POLICY = OutlierDetection(
    consecutive_5xx=3, interval_s=1.0, base_ejection_time_s=5.0, max_ejection_percent=50
)
HOSTS = ["a", "b", "c", "d"]


def test_consecutive_5xx_ejects_and_recovers_after_base_time() -> None:
    clock = ManualClock(monotonic=0.0)
    od = OutlierDetector(POLICY, HOSTS, clock.monotonic())
    assert od.on_result("a", 500, clock.monotonic()) is None
    assert od.on_result("a", 503, clock.monotonic()) is None
    ejection = od.on_result("a", 0, clock.monotonic())  # no response counts as 5xx
    assert ejection is not None
    assert ejection.reason == "consecutive_5xx"
    assert ejection.until == 5.0
    assert od.ejected() == {"a"}
    clock.advance(4.0)
    assert od.tick(clock.monotonic()) == []
    clock.advance(1.0)
    assert od.tick(clock.monotonic()) == ["a"]
    assert od.ejected() == frozenset()


def test_success_resets_the_streak() -> None:
    od = OutlierDetector(POLICY, HOSTS, 0.0)
    for status in (500, 500, 200, 500, 500):
        assert od.on_result("a", status, 0.0) is None


def test_ejection_time_grows_with_each_ejection() -> None:
    clock = ManualClock(monotonic=0.0)
    od = OutlierDetector(POLICY, HOSTS, 0.0)
    for _ in range(3):
        od.on_result("a", 500, clock.monotonic())
    clock.advance(5.0)
    od.tick(clock.monotonic())
    second = None
    for _ in range(3):
        second = od.on_result("a", 500, clock.monotonic())
    assert second is not None
    assert second.times == 2
    assert second.until == clock.monotonic() + 10.0


def test_healthy_intervals_shrink_the_multiplier() -> None:
    od = OutlierDetector(POLICY, HOSTS, 0.0)
    for _ in range(3):
        od.on_result("a", 500, 0.0)
    od.tick(5.0)
    assert od.times_ejected("a") == 1
    od.tick(6.0)
    assert od.times_ejected("a") == 0


def test_gateway_errors_counter() -> None:
    policy = OutlierDetection(
        consecutive_5xx=0, consecutive_gateway_errors=2, max_ejection_percent=100
    )
    od = OutlierDetector(policy, HOSTS, 0.0)
    assert od.on_result("a", 500, 0.0) is None  # 500 is not a gateway error
    assert od.on_result("a", 502, 0.0) is None
    ejection = od.on_result("a", 504, 0.0)
    assert ejection is not None
    assert ejection.reason == "consecutive_gateway_errors"


def test_max_ejection_percent_caps_ejections() -> None:
    od = OutlierDetector(POLICY, HOSTS, 0.0)  # 50 % of 4 = 2
    ejected = [h for h in HOSTS if [od.on_result(h, 500, 0.0) for _ in range(3)][-1]]
    assert ejected == ["a", "b"]
    assert od.ejected() == {"a", "b"}


def test_min_health_percent_disables_detection() -> None:
    policy = OutlierDetection(consecutive_5xx=1, max_ejection_percent=100, min_health_percent=60)
    od = OutlierDetector(policy, HOSTS, 0.0)
    od.on_result("a", 500, 0.0)
    assert od.ejected() == {"a"}  # 75 % healthy
    od.on_result("b", 500, 0.0)
    assert od.ejected() == frozenset()  # 50 % < 60 %: everyone takes traffic


# ----------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    ("retry_on", "status", "failure", "expected"),
    [
        pytest.param("5xx", 500, None, True, id="5xx-500"),
        pytest.param("5xx", None, Failure.RESET, True, id="5xx-reset"),
        pytest.param("gateway-error", 500, None, False, id="gw-500"),
        pytest.param("gateway-error", 503, None, True, id="gw-503"),
        pytest.param("gateway-error", None, Failure.CONNECT_FAILURE, True, id="gw-connect"),
        pytest.param("reset", None, Failure.RESET, True, id="reset"),
        pytest.param("reset", None, Failure.CONNECT_FAILURE, False, id="reset-not-connect"),
        pytest.param("connect-failure", None, Failure.CONNECT_FAILURE, True, id="connect"),
        pytest.param("connect-failure", 503, None, False, id="connect-not-503"),
        pytest.param("retriable-4xx", 409, None, True, id="409"),
        pytest.param("retriable-4xx", 404, None, False, id="404"),
        pytest.param("refused-stream", None, Failure.REFUSED_STREAM, True, id="refused"),
        pytest.param("503", 503, None, True, id="numeric"),
        pytest.param("503", 200, None, False, id="success"),
    ],
)
def test_retry_on(
    retry_on: str, status: int | None, failure: Failure | None, expected: bool
) -> None:
    policy = RetryPolicy(attempts=2, retry_on=frozenset(retry_on.split(",")))
    assert is_retriable(policy, status, failure) is expected


POLICY_5XX = RetryPolicy(attempts=2, retry_on=frozenset({"5xx"}))


def test_decide_retry_attempts_and_replay_safety() -> None:
    assert decide_retry(POLICY_5XX, retries_done=0, status=503).retry
    assert decide_retry(POLICY_5XX, retries_done=2, status=503).verdict is Verdict.NO_ATTEMPTS_LEFT
    assert decide_retry(POLICY_5XX, retries_done=0, status=404).verdict is Verdict.NOT_RETRIABLE
    big = decide_retry(
        POLICY_5XX, retries_done=0, status=503, body_bytes_sent=RETRY_BUFFER_BYTES + 1
    )
    assert big.verdict is Verdict.BODY_STREAMED
    streaming = decide_retry(
        POLICY_5XX,
        retries_done=0,
        status=503,
        body_bytes_sent=RETRY_BUFFER_BYTES,
        body_complete=False,
    )
    assert streaming.verdict is Verdict.BODY_STREAMED
    assert decide_retry(
        POLICY_5XX, retries_done=0, status=503, body_bytes_sent=RETRY_BUFFER_BYTES
    ).retry


def test_retry_budget_allows_minimum_plus_ratio_then_stops() -> None:
    clock = ManualClock(monotonic=0.0)
    budget = RetryBudget(ratio=0.2, min_per_s=1.0, ttl_s=10)  # reserve: 10 retries
    for _ in range(100):
        budget.record_request(clock.monotonic())
    allowed = 0
    while decide_retry(
        POLICY_5XX, retries_done=0, status=503, budget=budget, now=clock.monotonic()
    ).retry:
        allowed += 1
        assert allowed < 1000
    assert allowed == 10 + 20
    refused = decide_retry(
        POLICY_5XX, retries_done=0, status=503, budget=budget, now=clock.monotonic()
    )
    assert refused.verdict is Verdict.BUDGET_EXHAUSTED
    clock.advance(10.0)  # the window slides past the spent retries
    assert budget.try_withdraw(clock.monotonic())


def test_retry_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="bad retry budget"):
        RetryBudget(ttl_s=0)
