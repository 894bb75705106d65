"""`meshlet bench --quick` end to end: real processes, real TLS, real sidecars.

Asserts the report's structure and sanity only (files exist, percentiles
ordered, no errors), never a speed threshold: benchmarks are not tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meshlet.bench.topologies import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ORDER = ("min", "p50", "p90", "p99", "p99_9", "max")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[str]]:
    out = tmp_path_factory.mktemp("bench")
    kinds = [k for k in ("meshlet", "envoy", "haproxy") if unavailable(k) is None]
    argv = [
        sys.executable,
        "-m",
        "meshlet",
        "bench",
        "--quick",
        "--no-library",
        "--topologies",
        ",".join(["direct", *kinds]),
        "--out",
        str(out),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=170, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads((out / "results.json").read_text()), kinds


def test_files_are_written(quick_run: tuple[Path, dict[str, Any], list[str]]) -> None:
    out, _, _ = quick_run
    for name in ("results.json", "report.md", "latency_cdf.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "latency_cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "### Latency (ms)" in report
    assert "| direct |" in report


def test_every_topology_ran_without_errors(
    quick_run: tuple[Path, dict[str, Any], list[str]],
) -> None:
    _, results, kinds = quick_run
    assert results["failures"] == []
    ran = {run["kind"] for run in results["runs"]}
    assert ran == {"direct", *kinds}
    for run in results["runs"]:
        fig = run["figures"]
        assert fig["errors"] == 0, (run["topology"], fig["error_samples"])
        assert fig["ok"] == fig["sent"] > 0
        assert fig["handshake_errors"] == 0
        assert fig["handshake_ms"]["count"] > 0
        assert fig["closed_loop_rate_per_s"] > 0


def test_percentiles_are_ordered(quick_run: tuple[Path, dict[str, Any], list[str]]) -> None:
    _, results, _ = quick_run
    for run in results["runs"]:
        lat = run["figures"]["latency_ms"]
        values = [lat[k] for k in ORDER]
        assert values == sorted(values), (run["topology"], lat)
        assert lat["min"] > 0
        assert run["figures"]["handshake_ms"]["p50"] <= run["figures"]["handshake_ms"]["p99"]


def test_sidecar_resources_are_measured(quick_run: tuple[Path, dict[str, Any], list[str]]) -> None:
    _, results, _ = quick_run
    for run in results["runs"]:
        fig = run["figures"]
        if run["kind"] == "direct":
            assert fig["rss_idle_mib"] is None
            continue
        assert 0 < fig["rss_idle_mib"] <= fig["rss_peak_mib"]
        assert fig["cpu_ms_per_1k_req"] >= 0
        assert 0 < fig["startup_sidecar_s"] < fig["startup_chain_s"]


def test_machine_and_versions_are_recorded(
    quick_run: tuple[Path, dict[str, Any], list[str]],
) -> None:
    _, results, kinds = quick_run
    machine = results["machine"]
    assert machine["cpu_count"] >= 1
    for name in ("python", "openssl", "meshlet", *(k for k in kinds if k != "meshlet")):
        assert machine["versions"].get(name), name
