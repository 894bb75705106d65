"""Route timeouts fire on time through real sidecars: each routed request with a
timeout arms its own timer instead of waiting for the next deadline sweep
(which runs up to 1 s apart with long bootstrap timeouts)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
from tests.integration.traffic.mesh_support import Replica, mesh_of, vs
from tests.support.pki import Pki

from meshlet.config.bootstrap import Timeouts

pytestmark = pytest.mark.integration
T = 10.0
# Every bootstrap timeout long: the sweep runs once a second (its upper clamp).
SLOW_SWEEP = Timeouts(connect_s=10.0, header_read_s=10.0, idle_s=30.0, upstream_response_s=10.0)
# How late an answer may be. A sweep-driven timeout lands anywhere up to 1 s late,
# so each request alone has about even odds of being later than this. An own
# timer is late only by a loaded machine's scheduling delay, which a CI run once
# stretched to 0.7 s for one request: so each test sends REQUESTS and needs
# ON_TIME of them within the bound. A sweep-driven build passes that by chance
# with probability P(Binomial(8, 0.5) >= 6) = 37/256, so it fails ~86% of runs
# of each of the three tests; one slow request under load no longer fails it.
LATE_S = 0.5
REQUESTS = 8
ON_TIME = 6


async def _all_time_out(url: str, timeout_s: float, *, error: bytes | None) -> None:
    """REQUESTS answers: every one a 504 (with ``error`` when given), none early,
    and at least ON_TIME of them no later than LATE_S past ``timeout_s``."""
    answers = [await _timed_get(url) for _ in range(REQUESTS)]  # bounded: REQUESTS
    took = [round(t, 3) for _, _, t in answers]
    for status, got, _ in answers:
        assert status == 504, answers
        if error is not None:
            assert got == error, answers
    assert min(took) >= timeout_s - 0.01, took
    assert sum(t <= timeout_s + LATE_S for t in took) >= ON_TIME, took


def _route(timeout: str | None, per_try: str | None = None) -> str:
    retries = "{attempts: 0}" if per_try is None else f"{{attempts: 0, perTryTimeout: {per_try}}}"
    line = "  - route: [{destination: {host: inference}}]\n" + f"    retries: {retries}"
    return vs(line + (f"\n    timeout: {timeout}" if timeout else ""))


async def _timed_get(url: str) -> tuple[int, bytes, float]:
    """A GET through the outbound sidecar; status, x-meshlet-error and seconds taken."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        start = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nhost: inference\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        took = time.monotonic() - start
    finally:
        writer.close()
    error = b""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"x-meshlet-error:"):
            error = line.split(b":", 1)[1].strip()
    return int(head.split(b" ", 2)[1]), error, took


async def test_300ms_route_timeout_answers_504_on_time(tpki: Pki, tmp_path: Path) -> None:
    hang = Replica("hang", {}, hang=True)
    async with mesh_of(tpki, tmp_path, [hang], _route("300ms"), timeouts=SLOW_SWEEP) as mesh:
        await _all_time_out(mesh.url, 0.3, error=b"upstream_timeout")


async def test_per_try_timeout_answers_on_time(tpki: Pki, tmp_path: Path) -> None:
    hang = Replica("hang", {}, hang=True)
    routing = _route(None, per_try="250ms")
    async with mesh_of(tpki, tmp_path, [hang], routing, timeouts=SLOW_SWEEP) as mesh:
        await _all_time_out(mesh.url, 0.25, error=None)


async def test_timeout_added_by_apply_config_is_on_time(tpki: Pki, tmp_path: Path) -> None:
    hang = Replica("hang", {}, hang=True)
    async with mesh_of(tpki, tmp_path, [hang], _route(None), timeouts=SLOW_SWEEP) as mesh:
        new_routes = tmp_path / "routes-2.yaml"  # a new path: routing counts as changed
        new_routes.write_text(_route("300ms"))
        old = mesh.outbound.config
        assert old.outbound is not None
        mesh.outbound.apply_config(
            dataclasses.replace(
                old, outbound=dataclasses.replace(old.outbound, routing=(new_routes,))
            )
        )
        await _all_time_out(mesh.url, 0.3, error=None)
