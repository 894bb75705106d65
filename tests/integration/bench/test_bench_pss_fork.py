"""Summed RSS double-counts what a forked child shares with its parent; summed PSS does not.

A real parent touches 64 MiB, then forks a child that never writes to it: both
map the same physical pages copy-on-write, as a ``meshlet --workers`` parent and
its workers share their pre-fork heap. The bound (PSS sum at least 32 MiB below
RSS sum) is half of what the sharing alone predicts (64 MiB), so it holds
however the interpreter's own pages happen to be shared.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support.processes import gone

from meshlet.bench.procs import pss_mib, rss_mib, tree_pids

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux >= 4.14 smaps_rollup"
    ),
]

SHARED_MIB = 64
TIMEOUT_S = 30.0  # processes on a loaded 2-core machine

# bytes * n writes every byte (non-zero, so no page is the shared zero page);
# the child then only waits, so no page of the buffer is copied on write.
FORKER = f"""
import os, sys
buf = b"\\x01" * ({SHARED_MIB} << 20)
child = os.fork()
if child == 0:
    print("CHILD", os.getpid(), flush=True)
    sys.stdin.read()
    os._exit(0)
sys.stdin.read()
os.waitpid(child, 0)
"""


@pytest.fixture
async def forked() -> AsyncIterator[tuple[int, int]]:
    """(parent pid, child pid) of a live parent sharing 64 MiB with its forked child."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FORKER, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), TIMEOUT_S)
        word, child = line.split()
        assert word == b"CHILD", line
        yield proc.pid, int(child)
    finally:
        proc.stdin.close()  # EOF for both: the child exits, then the parent reaps it
        try:
            await asyncio.wait_for(proc.wait(), TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def test_pss_sum_counts_copy_on_write_pages_once(forked: tuple[int, int]) -> None:
    parent, child = forked
    pids = tree_pids(parent)
    assert sorted(pids) == sorted([parent, child])
    rss, pss = rss_mib(pids), pss_mib(pids)
    assert pss is not None
    assert rss_mib([child]) >= SHARED_MIB / 2  # the child maps the buffer too
    assert 0 < pss <= rss - SHARED_MIB / 2, (rss, pss)


def test_a_zombie_adds_nothing_rather_than_making_the_sum_unknown() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Killed and waited for without being reaped (WNOWAIT): a zombie, at once.
        proc.kill()
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        assert gone(proc.pid)
        assert pss_mib([proc.pid]) == 0.0
    finally:
        proc.wait(timeout=TIMEOUT_S)
