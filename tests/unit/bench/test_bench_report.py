"""report.md is built from results.json alone: medians, ranges, added latency, ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshlet.bench.histogram import Histogram
from meshlet.bench.report import build_report, envoy_peer, figure, stat, summarize
from meshlet.bench.runner import BenchOptions, plan


def _run(
    topology: str, rep: int, p99: float, *, workers: int = 1, rss: float | None = None
) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "latency_ms": {"p50": p99 / 4, "p90": p99 / 2, "p99": p99, "p99_9": p99 * 2},
        "handshake_ms": {"p50": 1.0, "p99": 3.0},
        "errors": 0,
    }
    if rss is not None:
        figures.update(rss_idle_mib=rss, rss_peak_mib=rss + 10, cpu_ms_per_1k_req=rss / 2)
    return {
        "topology": topology,
        "kind": topology.split("-")[0],
        "workers": workers,
        "repetition": rep,
        "figures": figures,
        "latency_hist": Histogram.of([1_000_000, 2_000_000]).to_dict(),
    }


RESULTS: dict[str, Any] = {
    "machine": {
        "cpu_count": 2,
        "platform": "Linux",
        "versions": {"python": "3.11", "envoy": "1.40.0"},
    },
    "options": {
        "workload": "echo",
        "rate_per_s": 1000,
        "duration_s": 30,
        "connections": 16,
        "repeat": 3,
    },
    "skipped": [{"what": "haproxy", "reason": "HAProxy not installed"}],
    "failures": [{"topology": "meshlet-w2", "repetition": 1, "reason": "no ready line"}],
    "runs": [
        _run("direct", 0, 1.0),
        _run("direct", 1, 2.0),
        _run("direct", 2, 3.0),
        _run("envoy-c1", 0, 4.0, rss=100.0),
        _run("envoy-c1", 1, 6.0, rss=120.0),
        _run("envoy-c1", 2, 5.0, rss=110.0),
        _run("meshlet-w1", 0, 10.0, rss=50.0),
        _run("meshlet-w1", 1, 12.0, rss=55.0),
    ],
    "library": {
        "policy": {"count": 10000, "mean_us": 7.5, "p99_us": 15.0, "per_s": 130000.0},
        "audit": {"skipped": "meshlet.telemetry.audit is not part of this build"},
    },
}


def test_stat_is_median_with_min_and_max() -> None:
    s = stat(RESULTS, "envoy-c1", "latency_ms.p99")
    assert s is not None
    assert (s.median, s.low, s.high, s.n) == (5.0, 4.0, 6.0, 3)
    assert s.cell(1) == "5.0 (4.0\u20136.0)"


def test_single_value_cell_has_no_range() -> None:
    only = {"runs": [_run("direct", 0, 2.0)]}
    s = stat(only, "direct", "latency_ms.p99")
    assert s is not None
    assert s.cell(2) == "2.00"


def test_missing_figures_are_none_not_zero() -> None:
    assert figure(RESULTS["runs"][0], "rss_idle_mib") is None
    assert stat(RESULTS, "direct", "rss_idle_mib") is None
    assert "rss_idle_mib" not in summarize(RESULTS, ["rss_idle_mib"])["direct"]


def test_envoy_peer_matches_worker_count_or_falls_back_to_c1() -> None:
    assert envoy_peer(RESULTS, "meshlet-w1") == "envoy-c1"
    two = {
        "runs": [
            *RESULTS["runs"],
            _run("envoy-c2", 0, 3.0, workers=2),
            _run("meshlet-w2", 0, 9.0, workers=2),
        ]
    }
    assert envoy_peer(two, "meshlet-w2") == "envoy-c2"
    assert envoy_peer({"runs": [_run("direct", 0, 1.0)]}, "direct") is None


def test_report_has_added_latency_and_ratios() -> None:
    text = build_report(RESULTS, command="meshlet bench --repeat 3")
    row = next(
        line for line in text.splitlines() if line.startswith("| meshlet-w1 |") and "+" in line
    )
    cells = [c.strip() for c in row.strip("|").split("|")]
    # p99 median 11.0 vs direct 2.0 -> +9.000; ratio 5.50x to direct, 2.20x to envoy (5.0)
    assert cells[3] == "11.000 (10.000\u201312.000)"
    assert "+9.000" in cells
    assert cells[-2:] == ["5.50\u00d7", "2.20\u00d7"]


def test_report_states_method_skips_failures_and_versions() -> None:
    text = build_report(RESULTS, command="meshlet bench --quick")
    assert "Command: `meshlet bench --quick`" in text
    assert "skipped haproxy: HAProxy not installed" in text
    assert "FAILED meshlet-w2 #2: no ready line" in text
    assert "envoy 1.40.0" in text
    assert text.count("Method:") >= 5
    assert "coordinated omission corrected" in text
    assert "hashed + written | skipped: meshlet.telemetry.audit" in text


def test_memory_table_lists_only_topologies_with_sidecars() -> None:
    text = build_report(RESULTS)
    memory = text.split("### Sidecar memory (MiB)")[1].split("###")[0]
    assert "| envoy-c1 | 110.0 (100.0\u2013120.0)" in memory
    assert "| direct |" not in memory


def test_empty_results_still_render() -> None:
    text = build_report({"runs": [], "options": {}, "machine": {}})
    assert text.startswith("# meshlet bench report")


def test_plan_always_runs_direct_and_skips_unknown_topologies(tmp_path: Path) -> None:
    opts = BenchOptions(out=tmp_path, topologies=("nope",), repeat=2)
    steps, skipped = plan(opts)
    assert [(s.variant.name, s.repetition) for s in steps] == [("direct", 0), ("direct", 1)]
    assert skipped == [
        {
            "what": "nope",
            "reason": "unknown topology 'nope' (known: direct, meshlet, envoy, haproxy)",
        }
    ]


@pytest.mark.parametrize(
    ("workload", "fragment"),
    [
        pytest.param("telepathy", "unknown workload", id="unknown"),
    ],
)
def test_plan_skips_an_unrunnable_workload_with_a_reason(
    tmp_path: Path, workload: str, fragment: str
) -> None:
    steps, skipped = plan(BenchOptions(out=tmp_path, workload=workload))
    assert steps == []
    assert fragment in skipped[0]["reason"]


def test_quick_options_are_small() -> None:
    quick = BenchOptions(out=Path("x"), duration_s=30, repeat=3, workers=(1, 2)).quickened()
    assert (quick.repeat, quick.workers, quick.quick) == (1, (1,), True)
    assert quick.duration_s <= 2.0
