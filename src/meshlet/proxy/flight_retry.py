"""What a ``Flight`` does between attempts: the request body it holds for
replay, the route deadlines it arms, and whether a response or failure is
retried (``decide_retry``: attempts, retryOn, the 64 KiB replay buffer, the
retry budget, ``maxRetries``). ``flight.Flight`` is the state machine that uses
these (and ``flight_head`` what it sends); the state itself lives in the slots
``_FlightState`` declares.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from meshlet.errors import UpstreamTimeout
from meshlet.proxy import rescue as rescues
from meshlet.proxy.exchange import Exchange
from meshlet.traffic.model_name import ScanState
from meshlet.traffic.retry import RETRY_BUFFER_BYTES, Failure, decide_retry

if TYPE_CHECKING:
    from meshlet.proxy.driver_up import UpstreamConnection
    from meshlet.proxy.routing import ClusterRuntime, OutboundTraffic
    from meshlet.traffic.balancer import Endpoint
    from meshlet.traffic.model_name import ModelFieldScanner
    from meshlet.traffic.router import ForwardPlan

__all__ = ["DISCARD_BYTES", "BodyBuffer", "Retrying"]

logger = logging.getLogger("meshlet.proxy.routing")  # one logger name for routing events

_FAILURES = {
    "upstream_connect": Failure.CONNECT_FAILURE,
    "upstream_reset": Failure.RESET,
    "upstream_protocol": Failure.RESET,
    "upstream_timeout": Failure.PER_TRY_TIMEOUT,
}
# Envoy's retry back-off: base 25 ms, full jitter, doubling per retry, capped at
# 10x the base (config.route.v3.RetryPolicy.retry_back_off).
_BACKOFF_BASE_S = 0.025
_BACKOFF_MAX_S = 0.25
# Request body read and dropped after a 413 before the connection is closed
# instead (nginx's lingering close reads for a bounded time in the same spirit).
DISCARD_BYTES = 1024 * 1024
# Event loops keep a cached "now" (libuv's uv_now, 1 ms resolution), so a timer
# may run a little before its deadline by time.monotonic; within this it counts.
_TIMER_SLACK_S = 0.001


class _FlightState:
    """A Flight's slots, and the attributes and steps the mixins use (declared for type
    checking only; ``flight.Flight`` sets them in ``__init__``)."""

    __slots__ = (
        "attempt_started",
        "body_limit",
        "body_refused",
        "body_seen",
        "buffer",
        "buffer_bytes",
        "buffer_over",
        "deadline_timer",
        "endpoint",
        "ex",
        "extra",
        "holding",
        "host",
        "in_retry",
        "mirrored",
        "model_span",
        "plan",
        "retries",
        "route_deadline",
        "rt",
        "scanner",
        "sent_model",
        "target",
        "timer",
        "total_deadline",
        "traffic",
        "tried",
    )

    if TYPE_CHECKING:
        traffic: OutboundTraffic
        ex: Exchange
        extra: list[bytes]
        plan: ForwardPlan | None
        rt: ClusterRuntime | None
        endpoint: Endpoint | None
        attempt_started: float
        retries: int
        tried: list[Endpoint]
        buffer: list[bytes]
        buffer_bytes: int
        buffer_over: bool
        body_seen: int
        body_limit: int | None
        body_refused: bool
        total_deadline: float
        in_retry: bool
        mirrored: bool
        scanner: ModelFieldScanner | None
        model_span: tuple[int, int] | None
        sent_model: str | None
        timer: asyncio.TimerHandle | None
        deadline_timer: asyncio.TimerHandle | None
        route_deadline: float

        def route(self, model: str | None) -> None: ...
        def _attempt(self) -> None: ...
        def _answer(self, r: rescues.Rescue) -> None: ...
        def _record(self, at: float, status: int) -> None: ...


class BodyBuffer(_FlightState):
    """The request body: counted against the route's limit, held for replay and
    mirrors while it fits, refused with 413 past the limit."""

    __slots__ = ()

    def on_body(self, ex: Exchange, body: bytes) -> bool:
        """A request body chunk; False: do not forward it (answered already)."""
        if ex.ended:
            return False
        n = len(body)
        self.body_seen += n
        limit = self.body_limit
        if limit is not None and self.body_seen > limit:
            self._refuse_body(limit)
            return False
        self._keep(body)
        scanner = self.scanner
        if scanner is not None:
            found = scanner.feed(body)
            if found.state is ScanState.FOUND and ex.pending is not None:
                # The model's bytes may lie in this chunk: hold it with the
                # earlier ones, so the plan can rewrite them before they leave.
                self.scanner = None
                self.model_span = found.span
                ex.pending.append(body)
                ex.pending_bytes += n
                self.route(found.model)
                return False  # held (or sent with the head) already
            if found.state is not ScanState.NEED_MORE:
                self.scanner = None
                self.route(found.model if found.state is ScanState.FOUND else None)
        return True

    def _keep(self, body: bytes) -> None:
        """Hold the body for replay and mirrors while it fits the 64 KiB buffer."""
        if not self.buffer_over:
            n = len(body)
            if self.buffer_bytes + n <= RETRY_BUFFER_BYTES:
                self.buffer.append(body)
                self.buffer_bytes += n
            else:  # streamed past the replay buffer: no retry, no mirror from here on
                self.buffer_over = True
                self.buffer = []

    def received_before_start(self, parts: list[bytes]) -> None:
        """Body parts parsed before routing began (a pipelined request waits in
        line with its body already read): count and hold them like later ones."""
        for part in parts:
            self.body_seen += len(part)
            self._keep(part)

    def _refuse_body(self, limit: int) -> None:
        """Past the body limit: stop the attempt, read and drop the rest of the body
        and answer 413 when it ends, so the client reads the answer instead of a
        reset (closing a socket with unread input sends RST, RFC 1122 4.2.2.13).
        A body that goes on past ``DISCARD_BYTES`` more gets the 413 and a close."""
        ex = self.ex
        if self.body_refused:
            if self.body_seen - limit > DISCARD_BYTES:
                self._answer(rescues.body_too_large(limit))
            return
        self.body_refused = True
        self.scanner = None
        up, ex.upstream = ex.upstream, None
        if up is not None:
            up.ex = None  # detached: its close is not this request's failure
            up.close()
        ex.pending = None
        if self.endpoint is not None:
            self._record(self.traffic.listener.monotonic(), 413)


class Retrying(_FlightState):
    """Route deadlines and retries of one flight."""

    __slots__ = ()

    def response_deadline(self, default: float) -> float:
        """When the attempt just attached must have a response head."""
        plan = self.plan
        deadline = default
        if self.total_deadline:
            deadline = self.total_deadline
        if plan is not None:
            per_try = plan.retries.per_try_timeout_s
            if per_try is not None:
                deadline = min(deadline, self.traffic.listener.monotonic() + per_try)
        if deadline != default:
            self._arm_deadline(deadline)
        return deadline

    def _arm_deadline(self, deadline: float) -> None:
        """A timer at a route deadline (total or per try). The server's sweep
        alone would fire it up to one sweep interval late (20 ms to 1 s); one
        ``call_later`` per routed request with a timeout costs about a
        microsecond and fires within a millisecond or two."""
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
        self.route_deadline = deadline
        delay = max(deadline - self.traffic.listener.monotonic(), 0.0)
        self.deadline_timer = asyncio.get_running_loop().call_later(delay, self._deadline_due)

    def _deadline_due(self) -> None:
        self.deadline_timer = None
        ex = self.ex
        up = ex.upstream
        if ex.ended:
            return
        if up is None or up.closed or up.ex is not ex:
            self._unattached_deadline_due()
            return
        deadline = up.deadline
        if not deadline or deadline not in (self.route_deadline, self.total_deadline):
            return  # not a route deadline (the sweep keeps the others)
        if self.traffic.listener.monotonic() + _TIMER_SLACK_S < deadline:
            # Early (the loop's cached time), or the head came and the total
            # timeout now bounds the rest of the response: wait for that.
            self._arm_deadline(deadline)
            return
        up.on_timeout()

    def _unattached_deadline_due(self) -> None:
        """No upstream carries the request (it is connecting, waiting for a
        connection or backing off): a passed total route timeout answers 504
        now rather than after the connect or handshake bound; a per-try
        deadline waits for the next attach, which re-arms it."""
        total = self.total_deadline
        if not total:
            return
        if self.traffic.listener.monotonic() + _TIMER_SLACK_S < total:
            self._arm_deadline(total)
            return
        # The same answer and count as a timeout on an attached upstream
        # (``UpstreamConnection.on_timeout``): to the caller both are the
        # route's timeout, Envoy's 504 UT either way.
        self.traffic.listener.metrics.upstream_error("timeout")
        self._answer(rescues.from_error(UpstreamTimeout("upstream timeout: no connection in time")))

    def _retry_on_status(
        self,
        ex: Exchange,
        up: UpstreamConnection,
        status: int,
        plan: ForwardPlan,
        rt: ClusterRuntime,
    ) -> bool:
        """An error response head: True when it is dropped and the request
        retried (``decide_retry`` says no to what retryOn does not name)."""
        decision = decide_retry(
            plan.retries,
            retries_done=self.retries,
            status=status,
            body_bytes_sent=self.body_seen,
            body_complete=ex.req_done and not self.buffer_over,
            budget=rt.state.budget,
            now=self.traffic.listener.now,
        )
        if decision.retry and self._retry_admitted():
            self._record(ex.head_at, status)
            up.ex = None
            ex.upstream = None
            up.close()
            self._retry()
            return True
        return False

    def on_failure(self, ex: Exchange, r: rescues.Rescue) -> bool:
        """An attempt failed with no response; True: retried."""
        failure = _FAILURES.get(r.error)
        plan, rt = self.plan, self.rt
        if failure is None or self.endpoint is None or plan is None or rt is None:
            return False
        now = self.traffic.listener.monotonic()
        self._record(now, 0)
        if self.total_deadline and now >= self.total_deadline:
            return False
        decision = decide_retry(
            plan.retries,
            retries_done=self.retries,
            failure=failure,
            body_bytes_sent=self.body_seen,
            body_complete=ex.req_done and not self.buffer_over,
            budget=rt.state.budget,
            now=self.traffic.listener.now,
        )
        if not decision.retry or not self._retry_admitted():
            return False
        self._retry()
        return True

    def _retry_admitted(self) -> bool:
        rt = self.rt
        if rt is None:
            return False
        if self.in_retry:
            return True  # already counted as one retry in flight
        if not rt.state.limits.try_start_retry().admitted:
            return False
        self.in_retry = True
        return True

    def _retry(self) -> None:
        ex = self.ex
        self.retries += 1
        ex.upstream = None
        ex.pending = list(self.buffer)
        ex.pending_bytes = self.buffer_bytes
        ex.head_at = 0.0
        backoff = min(_BACKOFF_BASE_S * 2 ** (self.retries - 1), _BACKOFF_MAX_S)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(backoff * self.traffic.rng.random(), self._attempt_later)

    def _attempt_later(self) -> None:
        self.timer = None
        self._attempt()

    def _record(self, at: float, status: int) -> None:
        ep, rt = self.endpoint, self.rt
        self.endpoint = None
        if ep is None or rt is None:
            return
        outcome = rt.state.record(
            ep, max(0.0, at - self.attempt_started), status, self.traffic.listener.now
        )
        if outcome.ejection is not None:
            e = outcome.ejection
            logger.info(
                "outlier_ejected",
                extra={
                    "cluster": rt.name,
                    "endpoint": e.endpoint,
                    "reason": e.reason,
                    "times": e.times,
                },
            )
