"""results.json → report.md: medians with min-max across repetitions (pure code).

Every table carries the method it was measured with, so a reader never has to
guess whether "p99" means the 99th percentile (it does, here) or twice the mean.
Ratios are to ``direct`` (what the mesh costs at all) and to the Envoy variant
with the same worker count (how meshlet compares with the reference sidecar).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Typography for the report, escaped so the source stays ASCII-unambiguous.
EN_DASH = "\u2013"
TIMES = "\u00d7"


@dataclass(frozen=True, slots=True, kw_only=True)
class Stat:
    median: float
    low: float
    high: float
    n: int

    def cell(self, digits: int = 2) -> str:
        text = f"{self.median:.{digits}f}"
        if self.n > 1:
            text += f" ({self.low:.{digits}f}{EN_DASH}{self.high:.{digits}f})"
        return text


def figure(run: Mapping[str, Any], key: str) -> float | None:
    """A figure by dotted path (``latency_ms.p99``); ``None`` when absent."""
    node: Any = run.get("figures", {})
    for part in key.split("."):
        if not isinstance(node, Mapping) or node.get(part) is None:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) else None


def topologies(results: Mapping[str, Any]) -> list[str]:
    """Topology names in first-run order (direct first by construction)."""
    return list(dict.fromkeys(run["topology"] for run in results.get("runs", [])))


def stat(results: Mapping[str, Any], topology: str, key: str) -> Stat | None:
    values = [
        v
        for run in results.get("runs", [])
        if run["topology"] == topology and (v := figure(run, key)) is not None
    ]
    if not values:
        return None
    return Stat(median=statistics.median(values), low=min(values), high=max(values), n=len(values))


def summarize(results: Mapping[str, Any], keys: Iterable[str]) -> dict[str, dict[str, Stat]]:
    out: dict[str, dict[str, Stat]] = {}
    for topo in topologies(results):
        row = {key: s for key in keys if (s := stat(results, topo, key)) is not None}
        out[topo] = row
    return out


def envoy_peer(results: Mapping[str, Any], topology: str) -> str | None:
    """The Envoy variant to compare ``topology`` with: same worker count, else c1."""
    names = topologies(results)
    workers = {run["topology"]: run["workers"] for run in results.get("runs", [])}
    same = f"envoy-c{workers.get(topology, 1)}"
    if same in names:
        return same
    return "envoy-c1" if "envoy-c1" in names else None


def _ratio(a: Stat | None, b: Stat | None) -> str:
    if a is None or b is None or b.median == 0:
        return EN_DASH
    return f"{a.median / b.median:.2f}{TIMES}"


def _added(a: Stat | None, base: Stat | None) -> str:
    if a is None or base is None:
        return EN_DASH
    return f"{a.median - base.median:+.3f}"


def _table(
    results: Mapping[str, Any],
    title: str,
    method: str,
    columns: list[tuple[str, str]],
    *,
    compare: str | None = None,
    added_vs_direct: bool = False,
    digits: int = 2,
) -> list[str]:
    """One markdown table; ``compare`` adds ratio-to-direct/-Envoy columns for that key."""
    head = ["topology", *(label for label, _ in columns)]
    if added_vs_direct:
        head += [f"added {label} vs direct" for label, _ in columns]
    if compare:
        head += [f"{TIMES} direct", f"{TIMES} Envoy"]
    lines = [f"### {title}", "", f"Method: {method}", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "---|" * len(head))
    any_row = False
    for topo in topologies(results):
        stats = [stat(results, topo, key) for _, key in columns]
        if all(s is None for s in stats):
            continue
        any_row = True
        row = [topo, *(s.cell(digits) if s else EN_DASH for s in stats)]
        if added_vs_direct:
            row += [
                _added(s, stat(results, "direct", key))
                for s, (_, key) in zip(stats, columns, strict=True)
            ]
        if compare:
            mine = stat(results, topo, compare)
            peer = envoy_peer(results, topo)
            row += [
                _ratio(mine, stat(results, "direct", compare)),
                _ratio(mine, stat(results, peer, compare)) if peer else EN_DASH,
            ]
        lines.append("| " + " | ".join(row) + " |")
    if not any_row:
        return []
    return [*lines, ""]


def build_report(results: Mapping[str, Any], *, command: str = "meshlet bench") -> str:
    opts = results.get("options", {})
    machine = results.get("machine", {})
    versions = machine.get("versions", {})
    reps = opts.get("repeat", 1)
    lines = [
        "# meshlet bench report",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine.get('cpu_count')} CPUs, {machine.get('platform', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
        "",
        f"Load average (1/5/15 min) before: {_loadavg(machine.get('loadavg_before'))}, after: "
        f"{_loadavg(machine.get('loadavg_after'))}: other work on the machine skews every figure.",
        "",
        f"Workload `{opts.get('workload')}`, {opts.get('rate_per_s')} req/s open loop for "
        f"{opts.get('duration_s')} s over {opts.get('connections')} keep-alive connections "
        f"after a {opts.get('warmup_s', 0)} s warm-up at the same rate (not recorded), "
        f"{reps} repetition(s). Cells: median (min-max) across repetitions. Sidecar figures "
        "are for the pair (client-side + server-side sidecar) summed.",
        "",
    ]
    for skip in results.get("skipped", []):
        lines.append(f"- skipped {skip['what']}: {skip['reason']}")
    for fail in results.get("failures", []):
        lines.append(f"- FAILED {fail['topology']} #{fail['repetition'] + 1}: {fail['reason']}")
    if results.get("skipped") or results.get("failures"):
        lines.append("")
    lines += _latency_tables(results)
    lines += _resource_tables(results)
    lines += _library_table(results.get("library", {}))
    return "\n".join(lines).rstrip() + "\n"


def _loadavg(values: object) -> str:
    if not isinstance(values, list | tuple):
        return "?"
    return "/".join(f"{v:.2f}" for v in values)


def _latency_tables(results: Mapping[str, Any]) -> list[str]:
    pct = [
        ("p50", "latency_ms.p50"),
        ("p90", "latency_ms.p90"),
        ("p99", "latency_ms.p99"),
        ("p99.9", "latency_ms.p99_9"),
    ]
    out = _table(
        results,
        "Latency (ms)",
        "open-loop constant rate; each request timed from its intended send time "
        "(coordinated omission corrected) into a log-linear histogram (<0.8% bucket error); "
        "'added' = topology median - direct median.",
        pct,
        compare="latency_ms.p99",
        added_vs_direct=True,
        digits=3,
    )
    out += _table(
        results,
        "Service time (ms), not corrected",
        "the same requests timed from when each was actually written, not from its intended "
        "time: leaves out queueing in the generator (its stalls, and waits for a free "
        "connection). Lower than the figures above whenever anything stalled; use it only to "
        "tell the generator's stalls from the system's.",
        [("p50", "service_ms.p50"), ("p99", "service_ms.p99"), ("p99.9", "service_ms.p99_9")],
        added_vs_direct=True,
        digits=3,
    )
    out += _table(
        results,
        "Cold start (ms)",
        "the first requests of the load after the topology started (how many: cold_ms.count "
        "in results.json; those inside the warm-up are in none of the tables above), each "
        "timed from its intended send time. Connection pools are empty but for the "
        "readiness probe's, so a sidecar pair sets up its mTLS connections here. First = the "
        "run's first request.",
        [
            ("first", "first_response_ms"),
            ("p50", "cold_ms.p50"),
            ("p99", "cold_ms.p99"),
            ("max", "cold_ms.max"),
        ],
        compare="cold_ms.max",
        added_vs_direct=True,
        digits=3,
    )
    out += _table(
        results,
        "Errors and the load generator",
        "errors = non-2xx or failed requests at the chosen rate, in the measured window and "
        "in the warm-up; send lag p99 = how late the generator's timer sent requests (the "
        "same for every topology); generator CPU % of one core; its longest garbage-"
        "collection pause in the measured window (set-up heap frozen, full collections "
        "held back until after the run).",
        [
            ("errors", "errors"),
            ("warm-up errors", "warmup_errors"),
            ("send lag p99 ms", "send_lag_ms.p99"),
            ("loadgen CPU %", "loadgen_cpu_pct"),
            ("loadgen GC max ms", "loadgen_gc.max_pause_ms"),
        ],
    )
    out += _table(
        results,
        "Streaming (ms)",
        "SSE upstream; time to first token from the intended send time, gaps between "
        "successive tokens at the client.",
        [("TTFT p50", "ttft_ms.p50"), ("TTFT p99", "ttft_ms.p99"), ("gap p99", "token_gap_ms.p99")],
        compare="ttft_ms.p99",
        added_vs_direct=True,
        digits=3,
    )
    out += _table(
        results,
        "mTLS handshake (ms)",
        "sequential new TCP+TLS 1.3 connections with the client SVID to the server-side "
        "sidecar's inbound port, connect to handshake done; for direct, a bare TLS server "
        "(Python ssl on uvloop, same certificates) as the floor.",
        [("p50", "handshake_ms.p50"), ("p99", "handshake_ms.p99")],
        compare="handshake_ms.p50",
        digits=3,
    )
    return out


def _resource_tables(results: Mapping[str, Any]) -> list[str]:
    out = _table(
        results,
        "Sidecar memory (MiB)",
        "summed over both sidecars and all their processes, after start-up and settling "
        "(idle) and right after the load; RSS (sum) = VmRSS, peak = VmHWM; PSS = Pss of "
        "/proc/PID/smaps_rollup, which divides each shared page among the processes that "
        "map it. Summed RSS counts the pages a --workers parent shares copy-on-write with "
        "its forked workers once per process; summed PSS counts them once, so it is the "
        f"fair figure for forked workers ({EN_DASH} where smaps_rollup is unreadable). "
        f"{TIMES} columns: RSS (sum) peak.",
        [
            ("RSS (sum) idle", "rss_idle_mib"),
            ("PSS idle", "pss_idle_mib"),
            ("RSS (sum) after load", "rss_after_load_mib"),
            ("PSS after load", "pss_after_load_mib"),
            ("RSS (sum) peak", "rss_peak_mib"),
        ],
        compare="rss_peak_mib",
        digits=1,
    )
    out += _table(
        results,
        "Sidecar memory, PSS (MiB)",
        "PSS after the load, as above, with its ratio to Envoy's at the same worker "
        "count: the like-for-like memory comparison when meshlet forks workers.",
        [("PSS after load", "pss_after_load_mib")],
        compare="pss_after_load_mib",
        digits=1,
    )
    out += _table(
        results,
        "Sidecar CPU",
        "utime+stime from /proc/<pid>/stat of both sidecars over the open-loop load, per "
        "1,000 requests and as % of one core.",
        [("CPU-ms / 1k req", "cpu_ms_per_1k_req"), ("% of a core", "cpu_core_pct")],
        compare="cpu_ms_per_1k_req",
        digits=1,
    )
    out += _table(
        results,
        "Startup (s)",
        "sidecar alone: server-side sidecar exec → first mTLS handshake accepted; chain: app "
        "exec → first 200 through both sidecars (started one after the other).",
        [("sidecar", "startup_sidecar_s"), ("app + sidecars", "startup_chain_s")],
        digits=3,
    )
    out += _table(
        results,
        "Throughput (req/s)",
        "closed loop: every connection sends as soon as it has an answer (for direct this is the "
        "load generator's own ceiling: no topology can show more); within bound: the highest "
        "open-loop step below it whose p99 stays within the bound with no errors; per worker "
        "= within bound / workers.",
        [
            ("closed loop", "closed_loop_rate_per_s"),
            ("within p99 bound", "max_rate_within_bound_per_s"),
            ("per worker", "max_rate_per_worker_per_s"),
        ],
        compare="max_rate_within_bound_per_s",
        digits=0,
    )
    return out


def _library_table(library: Mapping[str, Any]) -> list[str]:
    if not library:
        return []
    lines = [
        "### Library figures",
        "",
        "Method: in-process calls of each package's public API, each call timed with "
        "perf_counter_ns into a histogram.",
        "",
        "| figure | count | mean µs | p99 µs | per second |",
        "|---|---|---|---|---|",
    ]
    names = {
        "policy": "policy evaluation (50 rules)",
        "audit": "audit: record() call; per second = hashed + written",
        "svid": "SVID issuance",
    }
    for key, label in names.items():
        fig = library.get(key, {})
        if "skipped" in fig or not fig:
            lines.append(f"| {label} | skipped: {fig.get('skipped', 'not run')} | | | |")
            continue
        cells = (
            fig["count"],
            f"{fig['mean_us']:.1f}",
            f"{fig['p99_us']:.1f}",
            f"{fig['per_s']:.0f}",
        )
        lines.append(f"| {label} | " + " | ".join(str(c) for c in cells) + " |")
    return [*lines, ""]
