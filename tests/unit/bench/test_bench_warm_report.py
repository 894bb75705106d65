"""report.md shows the cold start and the warm-up next to the steady state."""

from __future__ import annotations

from typing import Any

import pytest

from meshlet.bench.histogram import Histogram
from meshlet.bench.report import build_report
from meshlet.bench.runner import BenchOptions


def _run(topology: str, cold_max: float, *, warmup_errors: int = 0) -> dict[str, Any]:
    return {
        "topology": topology,
        "kind": topology.split("-")[0],
        "workers": 1,
        "repetition": 0,
        "figures": {
            "latency_ms": {"p50": 0.5, "p90": 1.0, "p99": 2.0, "p99_9": 3.0},
            "errors": 0,
            "warmup_errors": warmup_errors,
            "cold_ms": {"count": 200, "p50": 0.5, "p99": cold_max - 1, "max": cold_max},
            "first_response_ms": 1.0,
            "loadgen_gc": {"hygiene": True, "collections": [0, 0, 0], "max_pause_ms": 0.0},
        },
        "latency_hist": Histogram.of([1_000_000]).to_dict(),
    }


def _results(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "machine": {"cpu_count": 2, "versions": {}},
        "options": {"workload": "echo", "rate_per_s": 1000, "duration_s": 30, "warmup_s": 2.0},
        "runs": runs,
    }


def _row(report: str, section: str, topology: str) -> list[str]:
    body = report.split(f"### {section}", 1)[1].split("###", 1)[0]
    line = next(ln for ln in body.splitlines() if ln.startswith(f"| {topology} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_cold_start_has_its_own_table_with_added_max() -> None:
    report = build_report(_results([_run("direct", 5.0), _run("meshlet-w1", 54.0)]))
    row = _row(report, "Cold start (ms)", "meshlet-w1")
    # first, p50, p99, max, then added first/p50/p99/max vs direct
    assert row[1:5] == ["1.000", "0.500", "53.000", "54.000"]
    assert row[8] == "+49.000"
    assert "after a 2.0 s warm-up at the same rate (not recorded)" in report


def test_warmup_errors_are_reported_apart() -> None:
    report = build_report(_results([_run("direct", 5.0, warmup_errors=3)]))
    header = next(ln for ln in report.splitlines() if "warm-up errors" in ln)
    cells = [c.strip() for c in header.strip("|").split("|")]
    row = _row(report, "Errors and the load generator", "direct")
    assert row[cells.index("warm-up errors")] == "3.00"
    assert row[cells.index("errors")] == "0.00"


def test_results_from_before_the_warmup_render_without_a_cold_table() -> None:
    old = _run("direct", 5.0)
    for key in ("cold_ms", "first_response_ms", "warmup_errors", "loadgen_gc"):
        del old["figures"][key]
    report = build_report(_results([old]))
    assert "### Cold start" not in report
    assert "### Latency (ms)" in report


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(2.0, 0.5, id="default-shortened"),
        pytest.param(0.2, 0.2, id="shorter-kept"),
        pytest.param(0.0, 0.0, id="none-kept"),
    ],
)
def test_quick_shortens_the_warmup(given: float, expected: float, tmp_path: Any) -> None:
    opts = BenchOptions(out=tmp_path, warmup_s=given).quickened()
    assert opts.warmup_s == expected
    assert opts.cold_requests == 200
