"""The load generator's warm-up and cold-start figures, against a real upstream.

Counts here are fixed by the schedule (rate x seconds), not by timing: every
scheduled request is sent and answered unless something fails, and the drain
allowance is a minute, so a slow machine changes latencies, never the counts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshlet.bench.histogram import Histogram
from meshlet.bench.loadgen import LoadSpec
from meshlet.bench.procs import python_module, read_ready_port, spawn, stop
from meshlet.bench.runner import run_loadgen

pytestmark = [pytest.mark.integration]


async def _upstream(tmp_path: Path, *args: str) -> AsyncIterator[int]:
    child = await spawn(
        "upstream",
        python_module("meshlet.bench.upstreams", *args),
        logdir=tmp_path,
        stdout_pipe=True,
    )
    try:
        yield await read_ready_port(child, timeout_s=60.0)
    finally:
        await stop(child, grace_s=15.0)


@pytest.fixture
async def echo_port(tmp_path: Path) -> AsyncIterator[int]:
    async for port in _upstream(tmp_path, "echo"):
        yield port


@pytest.fixture
async def stream_port(tmp_path: Path) -> AsyncIterator[int]:
    async for port in _upstream(tmp_path, "stream", "--tokens", "3", "--token-interval-ms", "2"):
        yield port


def _count(result: dict[str, Any], name: str) -> int:
    return Histogram.from_dict(result[name]).count


async def test_warmup_requests_are_counted_apart_and_recorded_nowhere(echo_port: int) -> None:
    marks: list[int] = []
    spec = LoadSpec(
        port=echo_port,
        rate_per_s=200.0,
        warmup_s=0.5,  # 100 requests
        duration_s=1.0,  # 200 requests
        connections=4,
        cold_requests=30,
        drain_s=60.0,
    )
    result = await run_loadgen(spec, lambda: marks.append(1))
    assert result["errors"] == 0, result["error_samples"]
    assert result["warmup"] == {
        "sent": 100,
        "ok": 100,
        "errors": 0,
        "elapsed_s": pytest.approx(0.5),
    }
    assert result["sent"] == result["ok"] == 200
    # Only the measured requests reach the histograms.
    assert _count(result, "latency") == _count(result, "service") == 200
    assert _count(result, "send_lag") == 200
    assert marks == [1]  # the window opened once, after the warm-up
    # The measured rate is over the measured window only.
    assert result["elapsed_s"] >= 0.99
    assert result["gc"]["hygiene"] is True


async def test_cold_start_figure_is_the_first_requests(echo_port: int) -> None:
    spec = LoadSpec(
        port=echo_port,
        rate_per_s=200.0,
        warmup_s=0.2,  # 40 requests; the cold window (30) lies inside it
        duration_s=0.5,
        connections=4,
        cold_requests=30,
        drain_s=60.0,
    )
    result = await run_loadgen(spec)
    cold = Histogram.from_dict(result["cold"])
    assert cold.count == 30
    first_ms = result["first_response_ms"]
    assert first_ms is not None
    assert 0 < first_ms <= cold.max / 1e6 + 1e-9
    # Plausible: a loopback answer, well under the minute the drain allows.
    assert 0 < cold.percentile(50) <= cold.max < 60 * 1_000_000_000


async def test_without_warmup_the_cold_requests_are_also_measured(echo_port: int) -> None:
    spec = LoadSpec(
        port=echo_port, rate_per_s=100.0, duration_s=0.5, cold_requests=10, drain_s=60.0
    )
    result = await run_loadgen(spec)
    assert result["warmup"]["sent"] == 0
    assert result["sent"] == result["ok"] == 50
    assert _count(result, "latency") == 50
    assert _count(result, "cold") == 10


async def test_stream_tokens_of_warmup_requests_are_not_recorded(stream_port: int) -> None:
    spec = LoadSpec(
        port=stream_port,
        stream=True,
        rate_per_s=50.0,
        warmup_s=0.4,  # 20 requests
        duration_s=0.6,  # 30 requests
        connections=8,
        drain_s=60.0,
    )
    result = await run_loadgen(spec)
    assert result["errors"] == 0, result["error_samples"]
    assert result["warmup"]["ok"] == 20
    assert result["ok"] == 30
    assert _count(result, "ttft") == 30  # one first token per measured request
    # 3 tokens and the closing [DONE] event: 3 gaps each
    assert _count(result, "token_gap") == 30 * 3
