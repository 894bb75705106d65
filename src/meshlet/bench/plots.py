"""PNG plots of a run, drawn with matplotlib (imported here only, lazily, headless)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshlet.bench.histogram import Histogram
from meshlet.bench.report import stat, topologies

# Summed RSS beside PSS: RSS counts forked workers' shared pages once per process.
_MEMORY_KEYS = ("rss_idle_mib", "pss_idle_mib", "rss_peak_mib", "pss_after_load_mib")


def _merged_latency(results: Mapping[str, Any], topology: str) -> Histogram | None:
    merged: Histogram | None = None
    for run in results.get("runs", []):
        if run["topology"] != topology or "latency_hist" not in run:
            continue
        hist = Histogram.from_dict(run["latency_hist"])
        if merged is None:
            merged = hist
        else:
            merged.merge(hist)
    return merged


def write_plots(results: Mapping[str, Any], outdir: Path) -> list[Path]:
    """Latency CDF per topology, memory bars and CPU bars; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # no display on benchmark machines
    import matplotlib.pyplot as plt

    written: list[Path] = []
    names = topologies(results)

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in names:
        hist = _merged_latency(results, name)
        if hist is None or hist.count == 0:
            continue
        points = list(hist.cdf())
        ax.plot([v / 1e6 for v, _ in points], [f for _, f in points], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("latency from intended send time (ms, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Latency CDF (all repetitions merged)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    written.append(_save(fig, outdir / "latency_cdf.png", plt))

    for filename, title, keys, unit in (
        ("memory.png", "Sidecar pair memory", _MEMORY_KEYS, "MiB"),
        ("cpu.png", "Sidecar pair CPU per 1,000 requests", ("cpu_ms_per_1k_req",), "CPU-ms"),
    ):
        mesh = [n for n in names if stat(results, n, keys[0]) is not None]
        if not mesh:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            values = [s.median if (s := stat(results, n, key)) else 0.0 for n in mesh]
            ax.bar([x + i * width for x in range(len(mesh))], values, width, label=key)
        ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(mesh))], mesh)
        ax.set_ylabel(unit)
        ax.set_title(title + " (median of repetitions)")
        ax.legend()
        written.append(_save(fig, outdir / filename, plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
