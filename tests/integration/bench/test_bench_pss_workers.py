"""`meshlet bench` end to end with `--workers 2`: PSS lands in results.json and report.md.

The sums' relation, not their size: a meshlet pair at two workers is six
processes whose heaps the workers share copy-on-write with their parents, so
summed PSS is well under summed RSS (about 80 vs 210 MiB on the development VM;
the bound here is a quarter of that gap). Benchmarks are not tests: no figure is
compared with a speed or size threshold of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.support.processes import run_meshlet

from meshlet.bench.topologies import unavailable

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(unavailable("meshlet") is not None, reason="meshlet topology unavailable"),
    pytest.mark.skipif(
        not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux >= 4.14 smaps_rollup"
    ),
]

MEMORY = ("rss_idle_mib", "pss_idle_mib", "rss_after_load_mib", "pss_after_load_mib")


@pytest.fixture(scope="module")
def workers_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("pssbench")
    argv = ("bench", "--quick", "--no-library", "--topologies", "meshlet", "--workers", "2")
    proc = run_meshlet(*argv, "--out", out, timeout_s=240.0)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "results.json").read_text()), (out / "report.md").read_text()


def test_forked_workers_pss_sum_is_under_rss_sum(workers_run: tuple[dict[str, Any], str]) -> None:
    results, _ = workers_run
    assert results["failures"] == []
    (run,) = [r for r in results["runs"] if r["topology"] == "meshlet-w2"]
    fig = run["figures"]
    for rss_key, pss_key in (MEMORY[:2], MEMORY[2:]):
        assert 0 < fig[pss_key] < fig[rss_key] - 30.0, (rss_key, fig[rss_key], fig[pss_key])


def test_direct_has_no_sidecar_memory(workers_run: tuple[dict[str, Any], str]) -> None:
    results, _ = workers_run
    (run,) = [r for r in results["runs"] if r["topology"] == "direct"]
    assert all(run["figures"][key] is None for key in MEMORY)


def test_report_shows_both_sums_for_the_workers(workers_run: tuple[dict[str, Any], str]) -> None:
    _, report = workers_run
    memory = report.split("### Sidecar memory (MiB)\n")[1].split("###")[0]
    assert (
        "| topology | RSS (sum) idle | PSS idle | RSS (sum) after load | PSS after load |" in memory
    )
    row = next(line for line in memory.splitlines() if line.startswith("| meshlet-w2 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert all(cell[0].isdigit() for cell in cells[1:6]), row  # figures, not n/a
    assert "### Sidecar memory, PSS (MiB)" in report
