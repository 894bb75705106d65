"""Process supervision with real processes: restart with backoff, no orphans."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import pytest
from tests.support.processes import gone
from tests.support.waiting import STEP_TIMEOUT_S, wait_until

from meshlet.config.mesh import Restart
from meshlet.errors import ConfigError
from meshlet.mesh.supervisor import Backoff, ProcessSpec, Supervised

pytestmark = pytest.mark.integration


def _spec(tmp_path: Path, argv: list[str], restart: Restart = "on-failure") -> ProcessSpec:
    return ProcessSpec(
        name="p",
        argv=tuple(argv),
        env=dict(os.environ),
        cwd=tmp_path,
        log_path=tmp_path / "p.log",
        restart=restart,
    )


async def test_crashing_process_is_restarted_with_backoff(tmp_path: Path) -> None:
    events: list[str] = []
    third = asyncio.Event()

    def record(message: str) -> None:
        events.append(message)
        if sum("restarting" in e for e in events) >= 4:
            third.set()

    p = Supervised(
        _spec(tmp_path, ["sh", "-c", "echo started; exit 3"]),
        on_event=record,
        backoff=Backoff(base_s=0.05, cap_s=0.2),
    )
    await p.spawn()
    task = asyncio.create_task(p.supervise())
    await asyncio.wait_for(third.wait(), 10)
    await p.stop(1.0)
    await asyncio.wait_for(task, 5)
    assert (tmp_path / "p.log").read_text().count("started") >= 4
    assert "exited with status 3" in events[0]
    assert "restarting in 0.1s" in events[1]  # doubled from 0.05


async def test_clean_exit_is_not_restarted_on_failure_policy(tmp_path: Path) -> None:
    events: list[str] = []
    p = Supervised(_spec(tmp_path, ["true"]), on_event=events.append)
    await p.spawn()
    await asyncio.wait_for(p.supervise(), 5)
    assert p.restarts == 0
    assert "exited with status 0 (restart: on-failure)" in events[0]


async def test_command_that_cannot_start_says_so(tmp_path: Path) -> None:
    p = Supervised(_spec(tmp_path, ["/nonexistent/model-server", "--port", "1"]))
    with pytest.raises(ConfigError, match=r"p: cannot start '/nonexistent/model-server'.*No such"):
        await p.spawn()


async def test_stop_leaves_no_orphans_even_when_sigterm_is_ignored(tmp_path: Path) -> None:
    lines: list[str] = []
    got_line = asyncio.Event()
    script = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )

    def on_line(line: str) -> None:
        lines.append(line)
        got_line.set()

    p = Supervised(
        _spec(tmp_path, [sys.executable, "-c", script], restart="always"),
        on_line=on_line,
        on_event=lambda _m: None,
    )
    await p.spawn()
    await asyncio.wait_for(got_line.wait(), STEP_TIMEOUT_S)  # a Python start on a loaded machine
    child = int(lines[0].split()[1])
    leader = p.pid
    assert leader is not None
    assert not gone(child)
    await asyncio.wait_for(p.stop(grace_s=0.3), 10)
    with contextlib.suppress(AssertionError):  # bounded wait for the kernel to finish the kills
        await wait_until(lambda: gone(child) and gone(leader))
    assert gone(child), "the grandchild survived"
    assert gone(leader)


async def test_a_huge_output_line_is_logged_not_fatal(tmp_path: Path) -> None:
    script = "import sys; sys.stdout.write('x' * 3_000_000 + '\\nafter\\n'); sys.stdout.flush()"
    p = Supervised(_spec(tmp_path, [sys.executable, "-c", script]), on_event=lambda _m: None)
    await p.spawn()
    assert await asyncio.wait_for(p.wait_exit(), 10) == 0
    await p.stop(1.0)
    text = (tmp_path / "p.log").read_text()
    assert text.count("x") == 3_000_000
    assert text.endswith("after\n")
