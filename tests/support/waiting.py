"""Bounded polling: wait for a condition, never for a fixed time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

STEP_TIMEOUT_S = 15.0  # one step of a test on a loaded 2-core machine


async def eventually(
    check: Callable[[], Any], *, timeout_s: float = STEP_TIMEOUT_S, interval_s: float = 0.05
) -> Any:
    """Poll ``check`` (sync, or returning a coroutine) until it returns a truthy
    value and return that; AssertionError after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)


async def wait_until(predicate: Callable[[], bool], timeout_s: float = STEP_TIMEOUT_S) -> None:
    """``eventually`` polling every 10 ms, for cheap in-process checks."""
    await eventually(predicate, timeout_s=timeout_s, interval_s=0.01)
