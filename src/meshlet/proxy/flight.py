"""One routed request across its attempts: the ``Flight`` the drivers call.

The drivers call it at five points (``exchange.Exchange.ctl``): request body
chunk, request end, response head, failure (before a synthetic answer) and
finish. It decides, in order: plan, fault, body limit, inference shedding, pool
limits, endpoint; then per attempt: deadlines, and whether a response or
failure is retried (``flight_retry.py`` holds the body buffer, the deadline
timers and the retry decisions). What is sent (the head, the InferenceModel's
target model in the body or path, mirror copies) is built in ``flight_head.py``;
mirrors go out fire-and-forget through ``mirror.MirrorSender``.
``routing.OutboundTraffic`` creates flights.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from meshlet.config.inference import Criticality
from meshlet.errors import NoRoute
from meshlet.proxy import rescue as rescues
from meshlet.proxy.exchange import Exchange
from meshlet.proxy.flight_head import ForwardHeads, apply_ops, declared_length
from meshlet.proxy.flight_retry import DISCARD_BYTES, BodyBuffer, Retrying
from meshlet.traffic.balancer import Endpoint
from meshlet.traffic.inference import Admit, admit, free_slots
from meshlet.traffic.match import RequestAttributes
from meshlet.traffic.model_name import ModelFieldScanner, ScanState
from meshlet.traffic.router import ForwardPlan

if TYPE_CHECKING:
    from meshlet.proxy.driver_up import UpstreamConnection
    from meshlet.proxy.routing import ClusterRuntime, OutboundTraffic

__all__ = ["DISCARD_BYTES", "Flight"]

# Sidecar refusals also counted in meshlet_upstream_errors_total{kind=...}.
_COUNTED = frozenset({"overflow", "shed", "no_healthy_upstream"})


class Flight(BodyBuffer, Retrying, ForwardHeads):
    """One routed request across its attempts."""

    __slots__ = ()  # declared by _FlightState, shared with the mixins

    def __init__(
        self, traffic: OutboundTraffic, ex: Exchange, host: str, target: bytes, extra: list[bytes]
    ) -> None:
        self.traffic = traffic
        self.ex = ex
        self.host = host
        self.target = target
        self.extra = extra
        self.scanner: ModelFieldScanner | None = None
        self.model_span: tuple[int, int] | None = None  # where the body names the model
        self.sent_model: str | None = None  # the target model sent (body or path)
        self.plan: ForwardPlan | None = None
        self.rt: ClusterRuntime | None = None
        self.endpoint: Endpoint | None = None  # the attempt in flight
        self.attempt_started = 0.0
        self.retries = 0
        self.tried: list[Endpoint] = []
        self.buffer: list[bytes] = []  # the request body so far, while <= 64 KiB
        self.buffer_bytes = 0
        self.buffer_over = False
        self.body_seen = 0
        self.body_limit: int | None = None
        self.body_refused = False  # past the limit: discarding the rest, 413 at its end
        self.total_deadline = 0.0  # 0: none
        self.holding = False  # holds a connection slot and a request slot
        self.in_retry = False
        self.mirrored = False
        self.timer: asyncio.TimerHandle | None = None
        # A timer at the attempt's route deadline (see _arm_deadline).
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.route_deadline = 0.0

    @property
    def upstream_host(self) -> str:
        """The endpoint of the last attempt, for the access log ("-": none)."""
        return self.tried[-1].address if self.tried else "-"

    # -- driver hooks ---------------------------------------------------------

    def on_request_end(self, ex: Exchange) -> None:
        if self.body_refused:
            limit = self.body_limit or 0
            self._answer(rescues.body_too_large(limit, close=False))
            return
        if self.scanner is not None:
            found = self.scanner.feed(b"", end=True)
            self.scanner = None
            self.route(found.model if found.state is ScanState.FOUND else None)
        elif self.plan is not None and self.holding:
            self._mirror()

    @property
    def idle_s(self) -> float:
        plan = self.plan
        return 0.0 if plan is None else plan.stream_idle_timeout_s

    def on_response(self, ex: Exchange, up: UpstreamConnection, status: int) -> bool:
        """A final response head; True: it is dropped and the request retried."""
        plan, rt, ep = self.plan, self.rt, self.endpoint
        if plan is None or rt is None or ep is None:
            return False
        if status >= 400 and self._retry_on_status(ex, up, status, plan, rt):
            return True
        ops = plan.response_headers
        if ops.set or ops.add or ops.remove:
            up.headers = apply_ops(up.headers, ops)
        if plan.set_cookie is not None:  # a generated consistent-hash cookie
            up.headers.append((b"set-cookie", plan.set_cookie.encode("latin-1")))
        return False

    def finish(self, ex: Exchange, now: float) -> None:
        """The exchange ended (answered, failed or the client left)."""
        if self.endpoint is not None:
            self._record(ex.head_at or now, ex.status or (499 if ex.flag == "DC" else 0))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
            self.deadline_timer = None
        rt = self.rt
        if rt is None:
            return
        limits = rt.state.limits
        if rt.waiting.remove(self):  # the client left while waiting for a slot
            limits.dequeued()
        if self.in_retry:
            self.in_retry = False
            limits.retry_done()
        if self.holding:
            self.holding = False
            limits.connection_closed()
            limits.request_done()
            self._next_waiting(rt)

    # -- deciding -------------------------------------------------------------

    def route(self, model: str | None) -> None:
        """Plan the request and start it (or answer it)."""
        ex = self.ex
        if ex.ended:
            return
        traffic = self.traffic
        attrs = RequestAttributes.from_head(
            host=self.host,
            method=ex.method,
            target=self.target,
            headers=ex.headers,
            source_ip=ex.conn.peer_ip,
            model_name=model,
        )
        try:
            plan = traffic.router.plan(attrs, traffic.rng)
        except NoRoute as exc:
            ex.service = self.host
            self._answer(rescues.route_not_found(str(exc)))
            return
        self.plan = plan
        ex.service = plan.backend.host
        if plan.fault_abort_status:
            self._answer(rescues.fault_abort(plan.fault_abort_status))
            return
        limit = plan.max_request_body_bytes
        self.body_limit = limit
        if limit is not None and (self.body_seen > limit or declared_length(ex) > limit):
            if ex.expect or ex.req_done:  # nothing more is coming: answer now
                self._answer(rescues.body_too_large(limit, close=not ex.req_done))
            else:
                self._refuse_body(limit)
            return
        if plan.timeout_s is not None:
            self.total_deadline = ex.started + plan.timeout_s
        try:
            rt = traffic.runtime(plan)
        except NoRoute as exc:
            self._answer(rescues.no_healthy_upstream(str(exc)))
            return
        self.rt = rt
        delta, path = self._retarget(plan, model)
        ex.head = self._head(plan, attrs.model_name, delta, path)
        if plan.fault_delay_s > 0:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(plan.fault_delay_s, self._admit)
            return
        self._admit()

    @property
    def criticality(self) -> Criticality:
        inference = None if self.plan is None else self.plan.inference
        return Criticality.STANDARD if inference is None else inference.criticality

    def _admit(self) -> None:
        """Shedding and pool limits, then the first attempt (or a place in line)."""
        self.timer = None
        ex, plan, rt = self.ex, self.plan, self.rt
        if ex.ended or self.body_refused or plan is None or rt is None:
            return
        state = rt.state
        limit = rt.limit_per_endpoint
        must_wait = bool(rt.waiting)  # others are in line: the line decides who goes
        if limit is not None:
            picker = state.picker
            verdict = admit(
                self.criticality, [picker.outstanding_of(e) for e in picker.endpoints], limit
            )
            if verdict is Admit.SHED:
                self._shed()
                return
            must_wait = must_wait or verdict is Admit.QUEUE
        limits = state.limits
        # HTTP/1.1 upstreams carry one request per connection, so maxConnections
        # bounds the requests in flight; beyond it requests wait, up to
        # http1MaxPendingRequests, and past that are refused (Envoy's breaker).
        if must_wait or limits.connections >= limits.limits.max_connections:
            self._wait(rt)
            return
        self._start(rt)

    def _shed(self) -> None:
        inference = None if self.plan is None else self.plan.inference
        pool = "" if inference is None else inference.pool
        self._answer(rescues.shed(f"every endpoint of pool {pool!r} is busy"))

    def _wait(self, rt: ClusterRuntime, *, again: bool = False) -> None:
        """Take a place in the cluster's line (``again``: at the front of its
        criticality, having lost its slot), then let the line move."""
        plan = self.plan
        if plan is None:
            return
        admission = rt.state.limits.try_enqueue()
        if not admission.admitted:
            self._answer(rescues.overflow(admission.reason))
            return
        rt.waiting.push(self, self.criticality, front=again)
        wait_s = plan.timeout_s or self.traffic.listener.timeouts.upstream_response_s
        self.timer = asyncio.get_running_loop().call_later(wait_s, self._wait_expired)
        self._next_waiting(rt)

    def _start(self, rt: ClusterRuntime) -> None:
        """Take a connection and a request slot and send the first attempt."""
        limits = rt.state.limits
        admission = limits.try_start_request()
        if not admission.admitted:
            self._answer(rescues.overflow(admission.reason))
            return
        limits.try_connect()
        self.holding = True
        self._attempt()
        if self.ex.req_done:
            self._mirror()

    def _wait_expired(self) -> None:
        self.timer = None
        rt = self.rt
        if rt is not None and rt.waiting.remove(self):
            rt.state.limits.dequeued()
        self._answer(rescues.route_timeout("no connection slot within the timeout"))

    def _next_waiting(self, rt: ClusterRuntime) -> None:
        """Slots may have freed up: start whom the line releases, each checked
        against the pool limit as it leaves the line (``SlotQueue.release``)."""
        limits = rt.state.limits
        picker = rt.state.picker
        limit = rt.limit_per_endpoint
        while rt.waiting:
            counts = [] if limit is None else [picker.outstanding_of(e) for e in picker.endpoints]
            free = max(0, limits.limits.max_connections - limits.connections)
            release = rt.waiting.release(counts, limit, free)
            for flight in (*release.shed, *release.send):
                limits.dequeued()
                if flight.timer is not None:
                    flight.timer.cancel()
                    flight.timer = None
            for flight in release.shed:
                flight._shed()
            for flight in release.send:
                if not flight.ex.ended:
                    flight._start(rt)
            if not release.send:
                return

    def _attempt(self) -> None:
        ex, rt, plan = self.ex, self.rt, self.plan
        if ex.ended or self.body_refused or rt is None or plan is None:
            return
        traffic = self.traffic
        now = traffic.listener.now
        limit = rt.limit_per_endpoint
        ep = rt.state.choose(
            now, traffic.rng, plan.hash_key, also_exclude=self.tried, limit_per_endpoint=limit
        )
        if ep is None:
            picker = rt.state.picker
            if (
                limit is not None
                and free_slots(map(picker.outstanding_of, picker.endpoints), limit) == 0
            ):
                self._lost_slot(rt)  # a retry whose slot was taken while it backed off
                return
            self._answer(rescues.no_healthy_upstream(f"no healthy endpoint in {rt.name}"))
            return
        pool = rt.pools[ep]
        self.endpoint = ep
        self.tried.append(ep)
        self.attempt_started = traffic.listener.monotonic()
        if self.retries == 0:
            rt.state.budget.record_request(now)
        ex.dst_principal = pool.identity or "unknown"
        ex.head_at = 0.0
        pool.forward(ex)
        if self.total_deadline and self.deadline_timer is None and not ex.ended:
            # Not attached yet (connecting, or in the pool's line): the route
            # timeout bounds connection set-up too, as Envoy's does.
            self._arm_deadline(self.total_deadline)

    def _lost_slot(self, rt: ClusterRuntime) -> None:
        """Every endpoint is at the pool's limit: give back the connection slot
        and wait in line again, ahead of those of the same criticality (a
        Sheddable request is shed instead, as it would be on arrival)."""
        if self.holding:
            self.holding = False
            limits = rt.state.limits
            limits.connection_closed()
            limits.request_done()
        if self.criticality is Criticality.SHEDDABLE:
            self._shed()
            return
        self._wait(rt, again=True)

    def _answer(self, r: rescues.Rescue) -> None:
        ex = self.ex
        if ex.ended:
            return
        if r.error in _COUNTED:  # breaker overflows and sheds, by kind
            self.traffic.listener.metrics.upstream_error(r.error)
        if self.rt is not None and self.rt.waiting.remove(self):
            self.rt.state.limits.dequeued()
        self.endpoint = None
        ex.conn.respond_rescue(ex, r)
