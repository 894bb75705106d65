"""PSS beside summed RSS: the smaps_rollup parser and the report's memory tables."""

from __future__ import annotations

from typing import Any

import pytest

from meshlet.bench.procs import parse_pss_kib, pss_mib
from meshlet.bench.report import EN_DASH, TIMES, build_report

# Captured from /proc/<pid>/smaps_rollup of a python3 process on Linux 6.18: the
# Pss_* breakdown lines (5.x+) come right after Pss and must not be taken for it.
ROLLUP_6 = """\
55b7607d6000-7ffcea9a6000 ---p 00000000 00:00 0                          [rollup]
Rss:                1752 kB
Pss:                 272 kB
Pss_Dirty:           116 kB
Pss_Anon:            116 kB
Pss_File:            156 kB
Pss_Shmem:             0 kB
Shared_Clean:       1600 kB
Shared_Dirty:          0 kB
Private_Clean:        36 kB
Private_Dirty:       116 kB
Referenced:         1752 kB
Anonymous:           116 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
"""

# The 4.14 layout (smaps_rollup's first kernel): no breakdown, SwapPss after Swap.
ROLLUP_4_14 = """\
00400000-7fff4cdf7000 ---p 00000000 00:00 0                              [rollup]
Rss:               28804 kB
Pss:               20133 kB
Shared_Clean:       9508 kB
Shared_Dirty:          0 kB
Private_Clean:       1188 kB
Private_Dirty:     18108 kB
Referenced:        28804 kB
Anonymous:         18108 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(ROLLUP_6, 272, id="linux-6-with-breakdown"),
        pytest.param(ROLLUP_4_14, 20133, id="linux-4.14"),
        pytest.param(
            "Pss_Anon:   5 kB\nPss_File:   7 kB\nPss:   12 kB\n", 12, id="breakdown-first"
        ),
        pytest.param("Rss: 10 kB\nSwapPss: 3 kB\n", None, id="no-pss-line"),
        pytest.param("Pss: kB\n", None, id="no-value"),
        pytest.param("", None, id="empty"),
    ],
)
def test_parser_reads_only_the_exact_pss_field(text: str, expected: int | None) -> None:
    assert parse_pss_kib(text) == expected


def test_no_processes_sum_to_zero_not_unknown() -> None:
    assert pss_mib([]) == 0.0


def _run(topology: str, rep: int, *, rss: float, pss: float | None, workers: int) -> dict[str, Any]:
    return {
        "topology": topology,
        "kind": topology.split("-")[0],
        "workers": workers,
        "repetition": rep,
        "figures": {
            "rss_idle_mib": rss,
            "pss_idle_mib": pss,
            "rss_after_load_mib": rss + 2,
            "pss_after_load_mib": None if pss is None else pss + 2,
            "rss_peak_mib": rss + 4,
        },
    }


RESULTS: dict[str, Any] = {
    "machine": {},
    "options": {},
    "runs": [
        _run("direct", 0, rss=0.0, pss=None, workers=1) | {"figures": {"rss_idle_mib": None}},
        _run("envoy-c2", 0, rss=130.0, pss=118.0, workers=2),
        _run("meshlet-w2", 0, rss=78.0, pss=54.0, workers=2),
        _run("haproxy-t2", 0, rss=34.0, pss=None, workers=2),
    ],
}


def _section(text: str, title: str) -> str:
    return text.split(f"### {title}\n")[1].split("###")[0]


def test_memory_table_labels_rss_sums_apart_from_pss() -> None:
    table = _section(build_report(RESULTS), "Sidecar memory (MiB)")
    head = next(line for line in table.splitlines() if line.startswith("| topology"))
    cells = [c.strip() for c in head.strip("|").split("|")]
    assert cells[:6] == [
        "topology",
        "RSS (sum) idle",
        "PSS idle",
        "RSS (sum) after load",
        "PSS after load",
        "RSS (sum) peak",
    ]
    assert "| meshlet-w2 | 78.0 | 54.0 | 80.0 | 56.0 | 82.0 |" in table
    assert "| direct |" not in table
    assert "smaps_rollup" in table  # the method says where PSS comes from


def test_unreadable_pss_shows_as_not_available_beside_rss() -> None:
    table = _section(build_report(RESULTS), "Sidecar memory (MiB)")
    assert f"| haproxy-t2 | 34.0 | {EN_DASH} | 36.0 | {EN_DASH} | 38.0 |" in table


def test_pss_table_compares_with_envoy_at_the_same_worker_count() -> None:
    table = _section(build_report(RESULTS), "Sidecar memory, PSS (MiB)")
    assert f"| meshlet-w2 | 56.0 | {EN_DASH} | {56.0 / 120.0:.2f}{TIMES} |" in table
    assert "| haproxy-t2 |" not in table  # no PSS at all: no row rather than a row of dashes
