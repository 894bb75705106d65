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

Raw asyncio protocols on uvloop with httptools' response parser keep the
per-request cost to a few microseconds, so the generator is not the bottleneck
(the report shows its own closed-loop rate against ``direct``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import ssl
import sys
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, cast

import httptools  # type: ignore[import-not-found,unused-ignore]

from meshlet.bench.histogram import Histogram
from meshlet.bench.schedule import OpenLoopSchedule, RateSpec

NS = 1_000_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    """One bounded run of the generator; every field is plain JSON."""

    port: int
    host: str = "127.0.0.1"
    path: str = "/"
    mode: str = "open"  # open | closed | handshake
    rate_per_s: float = 1000.0
    duration_s: float = 5.0
    connections: int = 16
    # A hard cap so no run is unbounded even at an absurd rate.
    max_requests: int = 2_000_000
    # Grace after the last intended send before outstanding requests count as errors.
    drain_s: float = 10.0
    stream: bool = False
    method: str = "GET"
    body_file: str | None = None
    host_header: str = "upstream"
    # handshake mode
    handshakes: int = 100
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    expect_server_uri: str | None = None


@dataclass(slots=True, kw_only=True)
class LoadResult:
    """What a run measured; histograms in nanoseconds."""

    mode: str
    sent: int = 0
    ok: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    latency: Histogram = field(default_factory=Histogram)
    ttft: Histogram = field(default_factory=Histogram)
    token_gap: Histogram = field(default_factory=Histogram)
    # open loop: how late after its intended time each request left the generator
    send_lag: Histogram = field(default_factory=Histogram)
    # from the moment the request was actually written: the uncorrected figure,
    # which leaves out the generator's own stalls (and hides the system's queueing)
    service: Histogram = field(default_factory=Histogram)
    cpu_s: float = 0.0

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "elapsed_s": self.elapsed_s,
            "achieved_rate_per_s": self.ok / self.elapsed_s if self.elapsed_s else 0.0,
            "cpu_s": self.cpu_s,
            "latency": self.latency.to_dict(),
            "ttft": self.ttft.to_dict(),
            "token_gap": self.token_gap.to_dict(),
            "send_lag": self.send_lag.to_dict(),
            "service": self.service.to_dict(),
        }


def build_request(spec: LoadSpec) -> bytes:
    body = Path(spec.body_file).read_bytes() if spec.body_file else b""
    head = f"{spec.method} {spec.path} HTTP/1.1\r\nHost: {spec.host_header}\r\n"
    if body or spec.method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode("ascii") + b"\r\n" + body


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

    def send(self, intended: float) -> None:
        assert self.transport is not None
        self.intended = intended
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
            if self.last_event == 0.0:
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
        start = perf_counter()
        if self.spec.mode == "open":
            rate = RateSpec(
                rate_per_s=self.spec.rate_per_s,
                duration_s=self.spec.duration_s,
                max_requests=self.spec.max_requests,
            )
            self.schedule = OpenLoopSchedule(rate, start_s=start)
            self.idle.extend(conns)
            self._tick()
        else:
            self.stop_at = start + self.spec.duration_s
            for conn in conns:
                self._send(conn, perf_counter())
        deadline = start + self.spec.duration_s + self.spec.drain_s
        try:
            await asyncio.wait_for(self.finished, timeout=max(0.1, deadline - perf_counter()))
        except TimeoutError:
            for _ in range(self.outstanding + len(self.pending)):
                self.result.error("timed out")
        self.result.elapsed_s = perf_counter() - start
        self.closing = True
        for conn in list(self.live):
            if conn.transport is not None:
                conn.transport.close()
        return self.result

    def _send(self, conn: _Conn, intended: float) -> None:
        self.outstanding += 1
        self.result.sent += 1
        if self.spec.mode == "open":
            self.result.send_lag.record(int((perf_counter() - intended) * NS))
        conn.send(intended)

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
        if ok:
            self.result.ok += 1
            self.result.latency.record(int((now - conn.intended) * NS))
            self.result.service.record(int((now - conn.sent_at) * NS))
        else:
            self.result.error(why)
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


def client_tls_context(spec: LoadSpec) -> ssl.SSLContext:
    """Verify the server against the bench CA and present the client SVID.

    Hostname checks are off because SVIDs carry only a URI SAN; the SPIFFE ID is
    compared after the handshake instead (``expect_server_uri``).
    """
    ctx = ssl.create_default_context(cafile=spec.ca_file)
    ctx.check_hostname = False
    if spec.cert_file and spec.key_file:
        ctx.load_cert_chain(spec.cert_file, spec.key_file)
    return ctx


async def run_handshakes(spec: LoadSpec) -> LoadResult:
    ctx = client_tls_context(spec)
    result = LoadResult(mode="handshake")
    start = perf_counter()
    for _ in range(spec.handshakes):
        if perf_counter() - start > spec.duration_s + spec.drain_s:
            break
        result.sent += 1
        t0 = perf_counter()
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(spec.host, spec.port, ssl=ctx), timeout=spec.drain_s
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            result.error(f"handshake failed: {exc!r}")
            continue
        elapsed = perf_counter() - t0
        if spec.expect_server_uri and not _has_uri(writer, spec.expect_server_uri):
            result.error(f"server is not {spec.expect_server_uri}")
        else:
            result.ok += 1
            result.latency.record(int(elapsed * NS))
        writer.close()
        # The peer may reset a connection that carried no request.
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
    result.elapsed_s = perf_counter() - start
    return result


def _has_uri(writer: asyncio.StreamWriter, uri: str) -> bool:
    cert = writer.get_extra_info("peercert") or {}
    return ("URI", uri) in cert.get("subjectAltName", ())


async def run(spec: LoadSpec) -> LoadResult:
    if spec.mode == "handshake":
        result = await run_handshakes(spec)
    elif spec.mode in ("open", "closed"):
        result = await _Generator(spec, asyncio.get_running_loop()).run()
    else:
        raise ValueError(f"unknown mode {spec.mode!r}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_s = usage.ru_utime + usage.ru_stime
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
