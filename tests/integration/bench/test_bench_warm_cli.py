"""`meshlet bench --warmup/--cold-requests`: validation and the figures they add.

A direct-only quick run keeps this cheap; structure and counts only, never a
speed threshold (benchmarks are not tests).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.support.processes import run_meshlet

pytestmark = [pytest.mark.integration]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(("--warmup", "-1"), "--warmup: must be >= 0 and finite, got -1.0", id="neg"),
        pytest.param(("--warmup", "inf"), "--warmup: must be >= 0 and finite, got inf", id="inf"),
        pytest.param(
            ("--cold-requests", "-5"), "--cold-requests: must be >= 0 and finite, got -5", id="cold"
        ),
    ],
)
def test_bad_options_are_refused_in_one_line(
    args: tuple[str, ...], message: str, tmp_path: Path
) -> None:
    proc = run_meshlet("bench", *args, "--out", tmp_path / "out", timeout_s=60.0)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"meshlet: error: {message}"]
    assert not (tmp_path / "out").exists()  # refused before anything ran


@pytest.fixture(scope="module")
def direct_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("warmbench")
    proc = run_meshlet(
        "bench",
        "--quick",
        "--no-library",
        "--topologies",
        "direct",
        "--warmup",
        "0.3",
        "--cold-requests",
        "40",
        "--out",
        out,
        timeout_s=170.0,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads((out / "results.json").read_text())


def test_warmup_is_run_and_left_out_of_the_measured_figures(
    direct_run: tuple[Path, dict[str, Any]],
) -> None:
    _, results = direct_run
    assert results["options"]["warmup_s"] == 0.3
    (run,) = results["runs"]
    fig = run["figures"]
    # --quick: 1,000 req/s for 2 s measured, after 0.3 s (300 requests) of warm-up.
    assert fig["warmup_sent"] == fig["warmup_ok"] == 300
    assert fig["warmup_errors"] == 0
    assert fig["sent"] == fig["ok"] == 2000
    assert fig["latency_ms"]["count"] == 2000


def test_cold_start_is_reported_and_plausible(direct_run: tuple[Path, dict[str, Any]]) -> None:
    out, results = direct_run
    fig = results["runs"][0]["figures"]
    cold = fig["cold_ms"]
    assert cold["count"] == 40
    assert 0 < cold["min"] <= cold["p50"] <= cold["p99"] <= cold["max"] < 60_000
    # one sample of the cold set (1e-9: ns / 1e6 and ns * 1e-6 may differ in the last bit)
    assert cold["min"] - 1e-9 <= fig["first_response_ms"] <= cold["max"] + 1e-9
    gc = fig["loadgen_gc"]
    assert gc["hygiene"] is True
    assert len(gc["collections"]) == 3
    report = (out / "report.md").read_text()
    assert "### Cold start (ms)" in report
    assert "after a 0.3 s warm-up at the same rate (not recorded)" in report
