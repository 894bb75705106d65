"""Drive a whole ``meshlet bench`` run: every topology variant, every repetition.

For each (variant, repetition), in this order, with the method of each step
written into results.json next to its figure:

1. start the app and the sidecar pair (``topologies.start``), timing startup;
2. let it settle, read the sidecars' idle RSS and PSS;
3. open-loop load at ``rate_per_s``: ``warmup_s`` of warm-up, then
   ``duration_s`` measured, over ``connections`` keep-alive connections,
   latency from intended send time; the first ``cold_requests`` (the
   topology's first traffic after start-up) timed apart as the cold start;
   sidecar CPU time (utime+stime) from the first measured request to the end;
   peak RSS (VmHWM), RSS and PSS after;
4. ``handshakes`` sequential new mTLS connections to the server sidecar (the
   bare TLS upstream for ``direct``: the floor); after the load, so the load's
   first requests meet the sidecars as start-up left them;
5. closed-loop maximum rate, then open-loop steps below it: the highest step
   whose p99 stays within ``p99_bound_ms`` without errors is the max throughput;
6. stop everything.

One variant failing to start is recorded with its reason and the run goes on.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from meshlet.bench.certs import issue_bench_certs
from meshlet.bench.histogram import Histogram
from meshlet.bench.loadgen import MEASURING, LoadSpec, spec_to_json
from meshlet.bench.payloads import INFER_PATH, READY_PATH, write_inference_body
from meshlet.bench.procs import (
    BenchError,
    Child,
    cpu_seconds,
    peak_rss_mib,
    pss_mib,
    python_module,
    read_ready_port,
    rss_mib,
    spawn,
    stop,
)
from meshlet.bench.topologies import (
    Running,
    StartContext,
    Variant,
    start,
    unavailable,
    versions,
)

MS = 1e-6  # histograms hold nanoseconds


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchOptions:
    out: Path
    topologies: tuple[str, ...] = ("direct", "meshlet", "envoy", "haproxy")
    workload: str = "echo"
    rate_per_s: float = 1000.0  # Istio's published method: 1,000 req/s, 1 KiB
    duration_s: float = 30.0
    connections: int = 16  # inside Istio's 4-64 range
    # wrk2/Nighthawk-style warm-up: pools fill and handshakes happen before the
    # window; 2 s at 1,000 req/s is 2,000 requests, past any set-up seen here
    warmup_s: float = 2.0
    # the first 200 requests: 200 ms at 1,000 req/s, the window in which
    # benchmarks/bench_proxy_tail.py saw the cold-start stall
    cold_requests: int = 200
    repeat: int = 3
    workers: tuple[int, ...] = (1, 2)  # meshlet --workers / Envoy --concurrency / HAProxy nbthread
    handshakes: int = 200
    max_rate_s: float = 5.0
    step_s: float = 5.0
    step_fractions: tuple[float, ...] = (0.5, 0.7, 0.85)
    p99_bound_ms: float = 50.0
    settle_s: float = 1.0
    tokens: int = 20
    token_interval_ms: float = 10.0
    library: bool = True
    quick: bool = False

    def quickened(self) -> BenchOptions:
        """Under a minute: one repetition, one worker count, short phases."""
        return replace(
            self,
            duration_s=min(self.duration_s, 2.0),
            warmup_s=min(self.warmup_s, 0.5),
            repeat=1,
            workers=self.workers[:1],
            handshakes=30,
            max_rate_s=1.0,
            step_s=0.5,
            step_fractions=(0.5,),
            settle_s=0.2,
            tokens=5,
            quick=True,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    variant: Variant
    repetition: int


def plan(opts: BenchOptions) -> tuple[list[Step], list[dict[str, str]]]:
    """The (variant, repetition) pairs to run, and one skip line per absent topology."""
    steps: list[Step] = []
    skipped: list[dict[str, str]] = []
    kinds = list(dict.fromkeys(("direct", *opts.topologies)))  # direct is the baseline
    workload_reason = workload_unavailable(opts.workload)
    if workload_reason:
        return [], [{"what": f"workload {opts.workload}", "reason": workload_reason}]
    for kind in kinds:
        reason = unavailable(kind)
        if reason:
            skipped.append({"what": kind, "reason": reason})
            continue
        counts = (1,) if kind == "direct" else opts.workers
        variants = [Variant(kind=kind, workers=n) for n in counts]
        steps.extend(Step(variant=v, repetition=r) for r in range(opts.repeat) for v in variants)
    steps.sort(key=lambda s: s.repetition)  # interleave: drift hits every topology alike
    return steps, skipped


def workload_unavailable(workload: str) -> str | None:
    import importlib.util

    if workload in ("echo", "stream"):
        return None
    if workload == "inference":
        if importlib.util.find_spec("meshlet.workloads.inference") is None:
            return "meshlet.workloads.inference is not part of this build"
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (pip install 'meshlet[torch]'); inference skipped"
        return None
    return f"unknown workload {workload!r} (echo, stream, inference)"


def app_argv(opts: BenchOptions, *, tls: tuple[Path, Path, Path] | None = None) -> list[str]:
    if opts.workload == "inference" and tls is None:
        return python_module("meshlet.workloads.inference", "--port", "0", "--backend", "torch")
    kind = "stream" if opts.workload == "stream" else "echo"
    args = [kind, "--tokens", str(opts.tokens), "--token-interval-ms", str(opts.token_interval_ms)]
    if tls is not None:
        args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1]), "--tls-ca", str(tls[2])]
    return python_module("meshlet.bench.upstreams", *args)


async def run_loadgen(
    spec: LoadSpec, on_measuring: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Run the generator in its own process; return its JSON result.

    ``on_measuring`` is called when the generator says its measured window
    opened (after the warm-up), so the caller's meters cover the same window.
    """
    proc = await asyncio.create_subprocess_exec(
        *python_module("meshlet.bench.loadgen", spec_to_json(spec)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=1 << 26,  # the result is one JSON line with every histogram
    )
    limit = spec.warmup_s + spec.duration_s + spec.drain_s + 30.0
    try:
        lines, err = await asyncio.wait_for(_read_loadgen(proc, on_measuring), timeout=limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"load generator did not finish within {limit:.0f} s") from None
    if proc.returncode != 0 or not lines:
        raise BenchError(f"load generator failed ({proc.returncode}): {err.decode()[-300:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def _read_loadgen(
    proc: asyncio.subprocess.Process, on_measuring: Callable[[], None] | None
) -> tuple[list[str], bytes]:
    assert proc.stdout is not None
    assert proc.stderr is not None
    err_task = asyncio.ensure_future(proc.stderr.read())  # drained alongside: no pipe stall
    lines: list[str] = []
    try:
        async for raw in proc.stdout:
            line = raw.decode().strip()
            if line == MEASURING:
                if on_measuring is not None:
                    on_measuring()
            elif line:
                lines.append(line)
        err = await err_task
    finally:
        err_task.cancel()  # a no-op once done; on a time-out nothing is left pending
    await proc.wait()
    return lines, err


def _summary(hist_dict: dict[str, Any]) -> dict[str, float]:
    return Histogram.from_dict(hist_dict).summary(MS)


async def measure(step: Step, opts: BenchOptions, ctx: StartContext) -> dict[str, Any]:
    variant = step.variant
    record: dict[str, Any] = {
        "topology": variant.name,
        "kind": variant.kind,
        "workers": variant.workers,
        "repetition": step.repetition,
    }
    running = await start(variant, ctx)
    try:
        record.update(await _measure_running(running, opts, ctx))
    finally:
        await running.stop()
    return record


async def _measure_running(
    running: Running, opts: BenchOptions, ctx: StartContext
) -> dict[str, Any]:
    fig: dict[str, Any] = {
        "startup_sidecar_s": running.startup_sidecar_s,
        "startup_chain_s": running.startup_chain_s,
    }
    await asyncio.sleep(opts.settle_s)
    pids = running.sidecar_pids()
    fig["rss_idle_mib"] = rss_mib(pids) if pids else None
    fig["pss_idle_mib"] = pss_mib(pids) if pids else None

    base = LoadSpec(
        port=running.entry_port, connections=opts.connections, stream=opts.workload == "stream"
    )
    if opts.workload == "inference":
        body = ctx.workdir / "inference-body.json"
        base = replace(base, method="POST", path=INFER_PATH, body_file=str(body))
    cpu0 = [cpu_seconds(pids)]

    def measuring() -> None:
        cpu0[0] = cpu_seconds(pids)  # a few /proc reads; the window just opened

    main_spec = replace(
        base,
        mode="open",
        rate_per_s=opts.rate_per_s,
        duration_s=opts.duration_s,
        warmup_s=opts.warmup_s,
        cold_requests=opts.cold_requests,
    )
    load = await run_loadgen(main_spec, measuring)
    cpu_s = cpu_seconds(pids) - cpu0[0]
    fig["rss_peak_mib"] = peak_rss_mib(pids) if pids else None
    fig["rss_after_load_mib"] = rss_mib(pids) if pids else None
    fig["pss_after_load_mib"] = pss_mib(pids) if pids else None
    fig["latency_ms"] = _summary(load["latency"])
    fig["send_lag_ms"] = _summary(load["send_lag"])
    fig["service_ms"] = _summary(load["service"])
    fig.update(
        sent=load["sent"],
        ok=load["ok"],
        errors=load["errors"],
        error_samples=load["error_samples"],
        achieved_rate_per_s=load["achieved_rate_per_s"],
        loadgen_cpu_pct=100.0 * load["cpu_s"] / load["elapsed_s"] if load["elapsed_s"] else None,
    )
    fig.update(_warm_and_cold(load))
    if pids and load["ok"]:
        fig["cpu_ms_per_1k_req"] = 1000.0 * cpu_s / load["ok"] * 1000.0
        fig["cpu_core_pct"] = 100.0 * cpu_s / load["elapsed_s"]
    if opts.workload == "stream":
        fig["ttft_ms"] = _summary(load["ttft"])
        fig["token_gap_ms"] = _summary(load["token_gap"])
    fig.update(await _handshakes(running, opts, ctx))
    fig.update(await _max_rate(base, running.variant.workers, opts))
    return {"figures": fig, "latency_hist": load["latency"]}


def _warm_and_cold(load: dict[str, Any]) -> dict[str, Any]:
    """The warm-up's counters, the cold-start figure and the generator's GC pauses."""
    warm = load["warmup"]
    gc = load["gc"]
    return {
        "warmup_sent": warm["sent"],
        "warmup_ok": warm["ok"],
        "warmup_errors": warm["errors"],
        "warmup_s": warm["elapsed_s"],
        "cold_ms": _summary(load["cold"]) if load["cold"]["total"] else None,
        "first_response_ms": load["first_response_ms"],
        "loadgen_gc": {k: gc[k] for k in ("hygiene", "collections", "max_pause_ms")},
    }


async def _handshakes(running: Running, opts: BenchOptions, ctx: StartContext) -> dict[str, Any]:
    certs = ctx.certs
    floor: Child | None = None
    port = running.mtls_port
    if port is None:  # direct: a bare TLS server with the same certificates is the floor
        tls = (certs.server.cert, certs.server.key, certs.bundle)
        argv = app_argv(opts, tls=tls)
        floor = await spawn("tls-floor", argv, logdir=ctx.workdir, stdout_pipe=True)
    try:
        if floor is not None:
            port = await read_ready_port(floor, timeout_s=30.0)
        assert port is not None
        spec = LoadSpec(
            port=port,
            mode="handshake",
            handshakes=opts.handshakes,
            duration_s=30.0,
            ca_file=str(certs.bundle),
            cert_file=str(certs.client.cert),
            key_file=str(certs.client.key),
            expect_server_uri=certs.server.spiffe_id,
        )
        result = await run_loadgen(spec)
    finally:
        if floor is not None:
            await stop(floor)
    summary = _summary(result["latency"])
    return {
        "handshake_ms": {k: summary[k] for k in ("count", "mean", "p50", "p99")},
        "handshake_errors": result["errors"],
        "handshake_error_samples": result["error_samples"],
    }


async def _max_rate(base: LoadSpec, workers: int, opts: BenchOptions) -> dict[str, Any]:
    closed = await run_loadgen(replace(base, mode="closed", duration_s=opts.max_rate_s))
    ceiling = closed["achieved_rate_per_s"]
    best = 0.0
    steps: list[dict[str, Any]] = []
    # If no step passes (the closed-loop ceiling was far past what keeps p99 in
    # bound), keep halving, at most three times.
    fractions = list(opts.step_fractions)
    while fractions:
        fraction = fractions.pop(0)
        rate = max(1.0, round(ceiling * fraction))
        res = await run_loadgen(replace(base, mode="open", rate_per_s=rate, duration_s=opts.step_s))
        p99 = _summary(res["latency"])["p99"]
        ok = res["errors"] == 0 and p99 <= opts.p99_bound_ms
        steps.append(
            {"rate_per_s": rate, "p99_ms": p99, "errors": res["errors"], "within_bound": ok}
        )
        if ok:
            best = max(best, rate)
        elif not fractions and best == 0.0 and fraction > opts.step_fractions[0] / 8:
            fractions.append(fraction / 2)
    return {
        "closed_loop_rate_per_s": ceiling,
        "closed_loop_p99_ms": _summary(closed["latency"])["p99"],
        "closed_loop_errors": closed["errors"],
        "max_rate_within_bound_per_s": best,
        "max_rate_per_worker_per_s": best / workers,
        "rate_steps": steps,
    }


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "versions": versions(),
        # Other work on the machine skews every figure; the load average says how much.
        "loadavg_before": list(os.getloadavg()),
    }


async def run_bench(opts: BenchOptions, progress: Callable[[str], None]) -> dict[str, Any]:
    """Run everything in ``opts``; write nothing (the caller writes the results)."""
    from meshlet.clock import MonotonicClock

    workdir = opts.out / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    steps, skipped = plan(opts)
    results: dict[str, Any] = {
        "format": 1,
        "machine": machine(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "skipped": skipped,
        "runs": [],
        "failures": [],
        "library": {},
    }
    certs = issue_bench_certs(workdir, now=MonotonicClock().wall())
    ctx = StartContext(certs=certs, workdir=workdir, app_argv=app_argv(opts))
    if opts.workload == "inference":
        write_inference_body(workdir / "inference-body.json")
        ctx = replace(ctx, ready_path=READY_PATH)
    for step in steps:
        progress(f"{step.variant.name} #{step.repetition + 1}")
        try:
            results["runs"].append(await measure(step, opts, ctx))
        except (BenchError, OSError) as exc:
            results["failures"].append(
                {"topology": step.variant.name, "repetition": step.repetition, "reason": str(exc)}
            )
    if opts.library:
        progress("library figures")
        from meshlet.bench.library import all_figures

        results["library"] = await asyncio.to_thread(all_figures, quick=opts.quick)
    results["machine"]["loadavg_after"] = list(os.getloadavg())
    progress("done")
    return results


def median_min_max(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)
