"""The load generator: HTTP/1.1 over keep-alive connections, in its own process.

Run as ``python -m meshlet.bench.loadgen SPEC_JSON``; it prints one JSON result
line. A separate process so the generator's event loop never shares a GIL with
the upstream or the orchestrator, and so its CPU is accounted apart.

Modes:

- ``open``: constant rate from ``OpenLoopSchedule``; each request's latency is
  measured from its *intended* send time, so queueing behind a slow connection
  counts against the system under test (coordinated omission corrected).
- ``closed``: every connection sends its next request as soon as the previous
  answer is in, for ``duration_s``: the maximum rate, latency from actual send.
- ``handshake``: sequential new TCP + TLS connections with a client
  certificate; the time from connect to a finished handshake.

Warm-up (open mode, ``warmup_s``): the schedule first runs ``warmup_s`` of
requests at the same rate, recorded in nothing but their own counters, so
one-off set-up (connection pools filling, TLS handshakes, first-use imports)
stays out of the steady-state histograms, as wrk2 and Nighthawk do. The
generator prints ``MEASURING`` on stdout when the first measured request
leaves, so the caller can start its own meters (sidecar CPU) at that moment.
The first ``cold_requests`` of the run are recorded apart (``cold``), so the
cold-start cost stays visible instead of being dropped. The generator's own
garbage collections are kept out of the window (``loadgc``).

Raw asyncio protocols on uvloop with httptools' response parser keep the
per-request cost to a few microseconds, so the generator is not the bottleneck
(the report shows its own closed-loop rate against ``direct``).
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
from collections import deque
from dataclasses import asdict
from time import perf_counter
from typing import cast

import httptools  # type: ignore[import-not-found,unused-ignore]

from meshlet.bench.handshakes import run_handshakes
from meshlet.bench.loadgc import GcWindow
from meshlet.bench.loadspec import NS, LoadResult, LoadSpec, build_request
from meshlet.bench.schedule import OpenLoopSchedule, RateSpec

__all__ = ["MEASURING", "LoadResult", "LoadSpec", "main", "run", "spec_to_json"]

MEASURING = "MEASURING"  # the stdout line that opens the measured window


class _Conn(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.intended = 0.0
        self.sent_at = 0.0
        self.busy = False
        self.last_event = 0.0
        self.tail = b""
        self.seq = 0  # the request's index in the run, warm-up included
        self.warm = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"bad response: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.gen.lost(self)
        if self.busy:
            self.busy = False
            self.gen.done(self, ok=False, why=f"connection lost: {exc!r}")

    def send(self, intended: float, *, seq: int, warm: bool) -> None:
        assert self.transport is not None
        self.intended = intended
        self.seq = seq
        self.warm = warm
        self.sent_at = perf_counter()
        self.busy = True
        self.last_event = 0.0
        self.tail = b""
        self.transport.write(self.gen.request)

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        if not self.gen.spec.stream:
            return
        now = perf_counter()
        # An SSE event ends with a blank line (WHATWG HTML, server-sent events §9.2.6).
        events = (self.tail + body).count(b"\n\n")
        self.tail = body[-1:]
        for _ in range(events):
            if self.warm:
                pass
            elif self.last_event == 0.0:
                self.gen.result.ttft.record(int((now - self.intended) * NS))
            else:
                self.gen.result.token_gap.record(int((now - self.last_event) * NS))
            self.last_event = now

    def on_message_complete(self) -> None:
        if not self.busy:
            return
        self.busy = False
        status = self.parser.get_status_code()
        if 200 <= status < 300:
            self.gen.done(self, ok=True, why="")
        else:
            self.gen.done(self, ok=False, why=f"status {status}")
        if not self.parser.should_keep_alive() and self.transport is not None:
            self.transport.close()

    def _fail(self, why: str) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.busy:
            self.busy = False
            self.gen.done(self, ok=False, why=why)


class _Generator:
    """Open or closed loop over ``spec.connections`` connections."""

    def __init__(self, spec: LoadSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.request = build_request(spec)
        self.result = LoadResult(mode=spec.mode)
        self.idle: deque[_Conn] = deque()
        self.pending: deque[float] = deque()
        self.outstanding = 0
        self.schedule: OpenLoopSchedule | None = None
        self.stop_at = 0.0
        self.finished: asyncio.Future[None] = loop.create_future()
        self.live: set[_Conn] = set()
        self.closing = False
        self.tasks: set[asyncio.Task[None]] = set()
        self.seq = 0  # requests issued so far, warm-up included
        self.warm_n = 0  # open mode: how many of the first requests are warm-up
        self.measure_start = 0.0
        self.cpu0 = 0.0
        self.gc = GcWindow(hygiene=spec.gc_hygiene)

    async def connect(self) -> _Conn:
        _, proto = await self.loop.create_connection(
            lambda: _Conn(self), self.spec.host, self.spec.port
        )
        self.live.add(proto)
        return proto

    def lost(self, conn: _Conn) -> None:
        self.live.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if not self.closing:
            task = self.loop.create_task(self._replace())
            self.tasks.add(task)  # the loop keeps only a weak reference to tasks
            task.add_done_callback(self.tasks.discard)

    async def _replace(self) -> None:
        try:
            conn = await self.connect()
        except OSError as exc:
            self.result.error(f"reconnect failed: {exc!r}")
            return
        self._free(conn)

    async def run(self) -> LoadResult:
        conns = [await self.connect() for _ in range(self.spec.connections)]
        self.gc.setup()
        try:
            await self._run(conns)
        finally:
            self.gc.finish()
        self.result.gc = self.gc.to_dict()
        return self.result

    async def _run(self, conns: list[_Conn]) -> None:
        spec = self.spec
        start = perf_counter()
        warmup_s = 0.0
        if spec.mode == "open":
            if spec.warmup_s > 0:
                warmup_s = spec.warmup_s
                warm = RateSpec(
                    rate_per_s=spec.rate_per_s, duration_s=warmup_s, max_requests=spec.max_requests
                )
                self.warm_n = warm.total
            rate = RateSpec(
                rate_per_s=spec.rate_per_s,
                duration_s=spec.duration_s,
                max_requests=spec.max_requests,
            )
            self.schedule = OpenLoopSchedule(rate, start_s=start, warmup_requests=self.warm_n)
            self.idle.extend(conns)
            self._tick()
        else:
            self.stop_at = start + spec.duration_s
            for conn in conns:
                self._send(conn, perf_counter())
        deadline = start + warmup_s + spec.duration_s + spec.drain_s
        try:
            await asyncio.wait_for(self.finished, timeout=max(0.1, deadline - perf_counter()))
        except TimeoutError:
            self._time_out()
        end = perf_counter()
        self.gc.measure(False)
        if self.measure_start:
            self.result.elapsed_s = end - self.measure_start
            self.result.cpu_s = _cpu_s() - self.cpu0
        self.result.warmup_s = (self.measure_start or end) - start
        self.closing = True
        for conn in list(self.live):
            if conn.transport is not None:
                conn.transport.close()

    def _time_out(self) -> None:
        for conn in self.live:
            if conn.busy:
                self.result.error("timed out", warm=conn.warm)
        for k in range(len(self.pending)):
            self.result.error("timed out", warm=self.seq + k < self.warm_n)

    def _send(self, conn: _Conn, intended: float) -> None:
        seq = self.seq
        self.seq += 1
        if seq == self.warm_n:
            self._start_measuring(intended)
        warm = seq < self.warm_n
        self.outstanding += 1
        if warm:
            self.result.warmup_sent += 1
        else:
            self.result.sent += 1
            if self.spec.mode == "open":
                self.result.send_lag.record(int((perf_counter() - intended) * NS))
        conn.send(intended, seq=seq, warm=warm)

    def _start_measuring(self, intended: float) -> None:
        """The window opens at the intended time of its first request."""
        self.measure_start = intended
        self.cpu0 = _cpu_s()
        self.gc.measure(True)
        print(MEASURING, flush=True)

    def _tick(self) -> None:
        assert self.schedule is not None
        self.pending.extend(self.schedule.due(perf_counter()))
        while self.pending and self.idle:
            self._send(self.idle.popleft(), self.pending.popleft())
        nxt = self.schedule.next_at()
        if nxt is not None:
            # Event-loop timers have ~1 ms granularity (uvloop counts in ms); the
            # lateness this causes is recorded in ``send_lag`` and, being the same
            # for every topology, cancels out of the added-latency figures.
            self.loop.call_later(max(0.0, nxt - perf_counter()), self._tick)
        else:
            self._maybe_finish()

    def done(self, conn: _Conn, *, ok: bool, why: str) -> None:
        self.outstanding -= 1
        now = perf_counter()
        latency = int((now - conn.intended) * NS)
        if ok and conn.seq < self.spec.cold_requests:
            self.result.cold.record(latency)
        if ok and conn.seq == 0:
            self.result.first_response_ns = latency
        if not ok:
            self.result.error(why, warm=conn.warm)
        elif conn.warm:
            self.result.warmup_ok += 1
        else:
            self.result.ok += 1
            self.result.latency.record(latency)
            self.result.service.record(int((now - conn.sent_at) * NS))
        if conn.transport is not None and not conn.transport.is_closing():
            self._free(conn)

    def _free(self, conn: _Conn) -> None:
        if self.spec.mode == "open":
            if self.pending:
                self._send(conn, self.pending.popleft())
            else:
                self.idle.append(conn)
                self._maybe_finish()
        elif perf_counter() < self.stop_at and self.result.sent < self.spec.max_requests:
            self._send(conn, perf_counter())
        else:
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.outstanding or self.pending or self.finished.done():
            return
        if self.schedule is None or self.schedule.done:
            self.finished.set_result(None)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(spec: LoadSpec) -> LoadResult:
    """One run; open and closed mode count CPU over the measured window only."""
    if spec.mode == "handshake":
        result = await run_handshakes(spec)
        result.cpu_s = _cpu_s()
    elif spec.mode in ("open", "closed"):
        result = await _Generator(spec, asyncio.get_running_loop()).run()
    else:
        raise ValueError(f"unknown mode {spec.mode!r}")
    return result


def spec_to_json(spec: LoadSpec) -> str:
    return json.dumps(asdict(spec))


def main(argv: list[str]) -> int:
    spec = LoadSpec(**json.loads(argv[0]))
    import uvloop

    try:
        result = uvloop.run(run(spec))
    except OSError as exc:
        result = LoadResult(mode=spec.mode)
        result.error(f"could not connect: {exc!r}")
    print(json.dumps(result.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
