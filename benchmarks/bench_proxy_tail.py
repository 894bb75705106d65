"""Where the slowest requests through a sidecar pair lose their time (p99.9 diagnosis).

Runs the topologies of ``bench_proxy.py`` (direct, floor relay pair, meshlet
pair; same upstream and certificates) with a stall recorder in every process:

- an event-loop watchdog: a task that sleeps ``--tick-ms`` and, when it wakes
  more than ``--stall-ms`` late, records the stall with what the thread did in
  it: its own CPU time (``time.thread_time``), the time it waited runnable on a
  run queue (``/proc/thread-self/schedstat``, field 2: CPU contention) and the
  time spent in the garbage collector (``gc.callbacks``, CPU time); the rest
  is time the thread slept although a timer was due (blocked in a system call,
  page faults, timer slack);
- every collection's CPU time by generation.

The load generator is open loop (latency from each request's scheduled send
time) and keeps the send time and latency of every request slower than
``--slow-ms``. The report gives, per topology, the latency percentiles, each
process's stalls by cause, and for the requests at or above the run's p99.9,
which process stalled while they were in flight.

    .venv/bin/python benchmarks/bench_proxy_tail.py --seconds 10 --rounds 2

The watchdog adds ``1000 / tick-ms`` wake-ups per second to every process it
watches; compare topologies with each other in one run, not with bench_proxy.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_proxy as bp

PY = sys.executable
HERE = str(Path(__file__).resolve())

# ------------------------------------------------------------ in every child


def _install_recorder(out: str, tick_s: float, stall_s: float) -> None:
    """Append one JSON line per stall / long collection to ``out`` (rare events,
    so the file write does not disturb what it measures)."""
    pc, tt = time.perf_counter, time.thread_time
    sink = open(out, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    sink.write(json.dumps({"kind": "start", "t": pc(), "argv": sys.argv[3:]}) + "\n")
    gc_cpu = [0.0, 0.0]  # [started at, total]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_cpu[0] = tt()
            return
        used = tt() - gc_cpu[0]
        gc_cpu[1] += used
        if used > 0.001:
            sink.write(json.dumps({"kind": "gc", "t": pc(), "gen": info["generation"],
                                   "cpu_ms": used * 1000}) + "\n")  # fmt: skip

    gc.callbacks.append(on_gc)

    async def watch() -> None:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)

        def run_delay() -> int:
            return int(os.pread(fd, 128, 0).split()[1])

        last, last_cpu, last_rq, last_gc = pc(), tt(), run_delay(), gc_cpu[1]
        while True:
            await asyncio.sleep(tick_s)
            now, cpu, rq, gcs = pc(), tt(), run_delay(), gc_cpu[1]
            late = now - last - tick_s
            if late > stall_s:
                sink.write(json.dumps({
                    "kind": "stall", "t0": last + tick_s, "t1": now, "late_ms": late * 1000,
                    "cpu_ms": (cpu - last_cpu) * 1000, "runq_ms": (rq - last_rq) / 1e6,
                    "gc_ms": (gcs - last_gc) * 1000,
                }) + "\n")  # fmt: skip
            last, last_cpu, last_rq, last_gc = now, cpu, rq, gcs

    original = asyncio.Runner.run

    def run(self: asyncio.Runner, coro: Any, **kw: Any) -> Any:
        async def with_watchdog() -> Any:
            task = asyncio.get_running_loop().create_task(watch())
            try:
                return await coro
            finally:
                task.cancel()

        return original(self, with_watchdog(), **kw)

    # A diagnostic wrapper: every role here (and meshlet's runner) goes through
    # asyncio.Runner, so the watchdog starts on whichever loop the role makes.
    asyncio.Runner.run = run  # type: ignore[method-assign]


def _loadgen(port: int, rate: float, seconds: float, conns: int, slow_ms: float) -> None:
    """bench_proxy's open loop, keeping (send time, latency) of slow requests."""
    import httptools
    import uvloop

    request = b"GET /bench HTTP/1.1\r\nhost: bench\r\n\r\n"
    lat: list[float] = []
    slow: list[tuple[float, float]] = []

    class C(asyncio.Protocol):
        def __init__(self) -> None:
            self.done: asyncio.Future[None] | None = None
            self.p = httptools.HttpResponseParser(self)

        def connection_made(self, transport: Any) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            self.p.feed_data(data)

        def on_message_complete(self) -> None:
            if self.done is not None and not self.done.done():
                self.done.set_result(None)

    async def worker(i: int, t0: float, end: float) -> None:
        loop = asyncio.get_running_loop()
        now = time.perf_counter
        _, c = await loop.create_connection(C, "127.0.0.1", port)
        k = i
        while (due := t0 + k / rate) < end:
            if due > now():
                await asyncio.sleep(due - now())
            c.done = loop.create_future()
            c.t.write(request)
            await asyncio.wait_for(c.done, 10)
            took = now() - due
            lat.append(took)
            if took * 1000 > slow_ms:
                slow.append((due, took))
            k += conns

    async def main() -> None:
        t0 = time.perf_counter() + 0.05
        await asyncio.gather(*(worker(i, t0, t0 + seconds) for i in range(conns)))
        lat.sort()
        n = len(lat)
        q = {f"p{p}": lat[min(n - 1, int(p / 100 * n))] * 1000 for p in (50, 99, 99.9)}
        print(json.dumps({"requests": n, "t0": t0, "t1": t0 + seconds, **q, "slow": slow}))

    uvloop.run(main())


# ------------------------------------------------------------------- parent


def _watched(log: Path, a: argparse.Namespace, *role: object) -> list[str]:
    return [PY, HERE, "--watch", str(log), str(a.tick_ms), str(a.stall_ms), *map(str, role)]


def _spawn(args: list[str], port_file: Path | None = None) -> subprocess.Popen[bytes]:
    proc, _, _ = bp._spawn(args, wait_file=port_file, ready_line=port_file is None)
    return proc


def _meshlet_pair(
    work: Path, a: argparse.Namespace, up_port: int, name: str, src: Path | None
) -> tuple[list[Any], int]:
    """A meshlet sidecar pair, from ``src`` (another tree's ``src/``) when given."""
    env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
    in_port, out_port = bp._free_port(), bp._free_port()
    (work / f"{name}-in.yaml").write_text(
        "identity: {cert: server/cert.pem, key: server/key.pem, bundle: server/bundle.pem}\n"
        "admin: null\n"
        f"inbound: {{listen: 127.0.0.1:{in_port}, app: 127.0.0.1:{up_port}, mtls: STRICT}}\n"
    )
    (work / f"{name}-out.yaml").write_text(
        "identity: {cert: client/cert.pem, key: client/key.pem, bundle: client/bundle.pem}\n"
        "admin: null\n"
        f"outbound:\n  listen: 127.0.0.1:{out_port}\n  services:\n    bench:\n      endpoints:\n"
        f'        - {{address: 127.0.0.1:{in_port}, identity: "{bp.SERVER_ID}"}}\n'
    )
    procs = []
    for side in ("in", "out"):
        args = _watched(work / f"{name}-{side}.jsonl", a, "meshlet", work / f"{name}-{side}.yaml")
        procs.append(bp._spawn(args, ready_line=True, env=env)[0])
    return procs, out_port


def _floor_pair(work: Path, a: argparse.Namespace, up_port: int) -> tuple[list[Any], int]:
    f_in, f_out = work / "relay-in.port", work / "relay-out.port"
    f_in.unlink(missing_ok=True)
    f_out.unlink(missing_ok=True)
    p_in = _spawn(_watched(work / "floor-in.jsonl", a, "relay", f_in, up_port, "in", work), f_in)
    in_port = int(f_in.read_text())
    p_out = _spawn(
        _watched(work / "floor-out.jsonl", a, "relay", f_out, in_port, "out", work), f_out
    )
    return [p_in, p_out], int(f_out.read_text())


def _load(work: Path, a: argparse.Namespace, name: str, port: int, seconds: float) -> Any:
    log = work / f"loadgen-{name}.jsonl"
    args = _watched(log, a, "loadgen", port, a.rate, seconds, a.conns, a.slow_ms)
    out = subprocess.run(args, capture_output=True, check=True, timeout=seconds + 60)
    return json.loads(out.stdout)


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _who(name: str) -> dict[str, str]:
    """The processes a request of topology ``name`` passes through -> their logs."""
    chain = {"loadgen": f"loadgen-{name}", "upstream": "upstream"}
    if name != "direct":
        chain = {"loadgen": chain["loadgen"], f"{name}-out": f"{name}-out",
                 f"{name}-in": f"{name}-in", "upstream": "upstream"}  # fmt: skip
    return chain


def _report(work: Path, name: str, runs: list[dict[str, Any]], slow_ms: float) -> None:
    chain = _who(name)
    med = {k: statistics.median(r[k] for r in runs) for k in ("p50", "p99", "p99.9")}
    print(f"\n{name}: p50 {med['p50']:.2f} ms  p99 {med['p99']:.2f} ms  "
          f"p99.9 {med['p99.9']:.2f} ms  (medians of {len(runs)} runs)")  # fmt: skip
    stalls: dict[str, list[dict[str, Any]]] = {}
    gcs: dict[str, list[dict[str, Any]]] = {}
    windows = [(r["t0"], r["t1"]) for r in runs]

    def inside(t: float) -> bool:
        return any(t0 <= t <= t1 for t0, t1 in windows)

    for role, log in chain.items():
        ev = _events(work / f"{log}.jsonl")
        if role == "loadgen":  # one log per run of this topology, all in one file
            ev = [e for e in ev if e["kind"] != "start"]
        stalls[role] = [e for e in ev if e["kind"] == "stall" and inside(e["t1"])]
        gcs[role] = [e for e in ev if e["kind"] == "gc" and inside(e["t"])]
    print(f"  {'process':12s} {'stalls':>6s} {'late ms':>8s} {'run queue':>9s} {'own CPU':>8s}"
          f" {'of it GC':>8s} {'asleep':>7s}  max late   GC > 1 ms")  # fmt: skip
    for role, st in stalls.items():
        late = sum(s["late_ms"] for s in st)
        rq = sum(min(s["runq_ms"], s["late_ms"]) for s in st)
        cpu = sum(min(s["cpu_ms"], s["late_ms"]) for s in st)
        g = sum(s["gc_ms"] for s in st)
        asleep = sum(max(s["late_ms"] - s["runq_ms"] - s["cpu_ms"], 0.0) for s in st)
        worst = max((s["late_ms"] for s in st), default=0.0)
        print(f"  {role:12s} {len(st):6d} {late:8.1f} {rq:9.1f} {cpu:8.1f} {g:8.1f} "
              f"{asleep:7.1f}  {worst:8.1f}   {len(gcs[role])}")  # fmt: skip
    # The requests at or above this run's p99.9: who stalled while they were out?
    tail = [(due, took) for r in runs for due, took in r["slow"] if took * 1000 >= r["p99.9"]]
    if not tail:
        return
    blame: dict[str, int] = {role: 0 for role in chain}
    nobody = 0
    for due, took in tail:
        hit = False
        for role, st in stalls.items():
            if any(s["t0"] < due + took and s["t1"] > due for s in st):
                blame[role] += 1
                hit = True
        nobody += not hit
    share = ", ".join(f"{role} {100 * n / len(tail):.0f}%" for role, n in blame.items())
    print(f"  {len(tail)} requests >= p99.9: a stall overlapped them in {share}; "
          f"in none: {100 * nobody / len(tail):.0f}%")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved runs per topology")
    ap.add_argument("--tick-ms", type=float, default=5.0, help="watchdog period")
    ap.add_argument("--stall-ms", type=float, default=3.0, help="lateness recorded as a stall")
    ap.add_argument("--slow-ms", type=float, default=2.0, help="requests kept for the tail")
    ap.add_argument("--only", choices=["direct", "floor", "meshlet"], action="append")
    ap.add_argument("--baseline", metavar="REV", action="append", help="also a meshlet pair "
                    "from this git revision (repeatable), for before/after in one run")  # fmt: skip
    ap.add_argument("--keep", metavar="DIR", help="keep the event logs in DIR")
    a = ap.parse_args()
    only = a.only or ["direct", "floor", "meshlet"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        bp._certs(work)
        trees: dict[str, Path | None] = {}
        for n, rev in enumerate(a.baseline or ()):
            name = "baseline" if n == 0 else f"base{n + 1}"
            trees[name] = bp._export_revision(rev, work / f"tree-{name}")
        if "meshlet" in only:
            trees["meshlet"] = None
        names = [n for n in ("direct", "floor") if n in only] + list(trees)
        runs, cold = _rounds(work, a, names, trees)
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"# {a.rate:.0f} req/s open loop, {a.seconds:.0f} s x {a.rounds} rounds, "
              f"{a.conns} connections; watchdog tick {a.tick_ms} ms, stalls > {a.stall_ms} ms; "
              f"load average at the end {load}")  # fmt: skip
        for name, rs in runs.items():
            _report(work, name, rs, a.slow_ms)
        print("\nThe first 200 ms against freshly started proxies (every connection new, end "
              f"to end; medians of {a.rounds} starts):")  # fmt: skip
        for name, firsts in cold.items():
            worst = statistics.median(max(f, default=0.0) for f in firsts) * 1000
            slow = statistics.median(len(f) for f in firsts)
            print(f"  {name:8s} max {worst:6.2f} ms, {slow:.0f} requests slower than "
                  f"{a.slow_ms} ms")  # fmt: skip
    return 0


def _rounds(
    work: Path, a: argparse.Namespace, names: list[str], trees: dict[str, Path | None]
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[list[float]]]]:
    """Every round starts each topology's proxies afresh (so each round has a cold
    start), loads it for 1 s (the cold start) and then ``--seconds`` (measured)."""
    up_file = work / "up.port"
    upstream = _spawn(_watched(work / "upstream.jsonl", a, "upstream", up_file), up_file)
    up_port = int(up_file.read_text())
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    cold: dict[str, list[list[float]]] = {name: [] for name in names}
    try:
        for _ in range(a.rounds):
            for name in names:
                procs, port = [], up_port
                if name == "floor":
                    procs, port = _floor_pair(work, a, up_port)
                elif name != "direct":
                    procs, port = _meshlet_pair(work, a, up_port, name, trees[name])
                try:
                    first = _load(work, a, f"cold-{name}", port, 1.0)
                    early = [took for due, took in first["slow"] if due - first["t0"] < 0.2]
                    cold[name].append(early)
                    runs[name].append(_load(work, a, name, port, a.seconds))
                finally:
                    for p in procs:
                        p.terminate()
                    for p in procs:
                        p.wait(timeout=20)
    finally:
        upstream.terminate()
        upstream.wait(timeout=20)
    return runs, cold


def _child(argv: list[str]) -> None:
    log, tick_ms, stall_ms, role, *rest = argv
    _install_recorder(log, float(tick_ms) / 1000, float(stall_ms) / 1000)
    if role == "meshlet":
        from meshlet.proxy.runner import run_proxy

        sys.exit(run_proxy(rest[0]))
    elif role == "upstream":
        bp._upstream(rest[0])
    elif role == "relay":
        bp._relay(rest[0], int(rest[1]), rest[2], rest[3])
    elif role == "loadgen":
        _loadgen(int(rest[0]), float(rest[1]), float(rest[2]), int(rest[3]), float(rest[4]))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--watch":
        _child(sys.argv[2:])
        sys.exit(0)
    sys.exit(main())
