"""The engine against real upstreams on loopback, with the event loop's clock.

A small test driver plays the proxy's part (pick -> send with httpx -> report),
so real latencies, real connection failures and real 5xx answers feed the
pickers, outlier detector and retry logic. Wiring into ``meshlet proxy`` itself
is the proxy's outbound pipeline; these tests pin the engine's behaviour under
real timing.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from meshlet.config.routing import OutlierDetection, RetryPolicy
from meshlet.traffic.balancer import Endpoint, EndpointPicker, P2CEwma, RoundRobin
from meshlet.traffic.outlier import OutlierDetector
from meshlet.traffic.retry import Failure, RetryBudget, decide_retry

pytestmark = pytest.mark.integration


@dataclass
class Upstream:
    """A tiny keep-alive HTTP/1.1 server whose delay and status change on cue."""

    delay_s: float = 0.0
    status: int = 200
    hits: int = 0
    server: asyncio.Server | None = None
    address: str = ""
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                self.hits += 1
                await asyncio.sleep(self.delay_s)
                reason = b"OK" if self.status == 200 else b"Unavailable"
                writer.write(
                    b"HTTP/1.1 %d %s\r\nContent-Length: 2\r\n\r\nok" % (self.status, reason)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.writers.discard(writer)
            writer.close()


@pytest.fixture
async def upstreams() -> AsyncIterator[list[Upstream]]:
    ups = [Upstream(), Upstream()]
    for up in ups:
        up.server = await asyncio.start_server(up.handle, "127.0.0.1", 0)
        host, port = up.server.sockets[0].getsockname()[:2]
        up.address = f"{host}:{port}"
    yield ups
    for up in ups:
        assert up.server is not None
        up.server.close()
        for w in list(up.writers):
            w.close()
        await asyncio.wait_for(up.server.wait_closed(), 5)


async def drive(
    picker: EndpointPicker, client: httpx.AsyncClient, requests: int, concurrency: int
) -> Counter[str]:
    """Send ``requests`` through ``picker`` with ``concurrency`` workers."""
    loop = asyncio.get_running_loop()
    rng = random.Random(3)
    sent: Counter[str] = Counter()
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            ep = picker.pick(loop.time(), rng)
            assert ep is not None
            sent[ep.address] += 1
            start = loop.time()
            r = await client.get(f"http://{ep.address}/infer", timeout=10)
            picker.on_result(ep, loop.time() - start, r.status_code, loop.time())

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 60)
    return sent


async def test_p2c_moves_real_load_away_from_a_10x_slower_upstream(
    upstreams: list[Upstream],
) -> None:
    fast, slow = upstreams
    # The picker learns latencies measured by this client, scheduling delays
    # included. At 5 ms vs 50 ms, concurrency 4, a loaded 2-core machine's delays
    # (peak-EWMA believes a slow sample at once) sent 37-86 of 200 to the slow one
    # in 7 of 8 trials; at 30 ms vs 300 ms, concurrency 2: at most 2 of 200.
    fast.delay_s, slow.delay_s = 0.030, 0.300
    eps = [Endpoint(address=fast.address), Endpoint(address=slow.address)]
    async with httpx.AsyncClient() as client:
        p2c = await drive(P2CEwma(eps), client, requests=200, concurrency=2)
        rr = await drive(RoundRobin(eps), client, requests=100, concurrency=4)
    assert rr[slow.address] == 50
    assert p2c[slow.address] < 0.25 * 200, p2c


async def test_retry_and_outlier_ejection_against_a_failing_upstream(
    upstreams: list[Upstream],
) -> None:
    good, bad = upstreams
    bad.status = 503
    loop = asyncio.get_running_loop()
    eps = [Endpoint(address=good.address), Endpoint(address=bad.address)]
    picker = RoundRobin(eps)
    od = OutlierDetector(
        OutlierDetection(
            consecutive_5xx=3, interval_s=0.05, base_ejection_time_s=0.2, max_ejection_percent=50
        ),
        [e.address for e in eps],
        loop.time(),
    )
    policy = RetryPolicy(attempts=2, retry_on=frozenset({"5xx"}))
    budget = RetryBudget()
    rng = random.Random(0)
    outcomes: list[int] = []
    async with httpx.AsyncClient() as client:
        for _ in range(20):
            budget.record_request(loop.time())
            od.tick(loop.time())
            tries = 0
            while True:
                ejected = od.ejected()
                ep = picker.pick(loop.time(), rng, exclude={e for e in eps if e.address in ejected})
                assert ep is not None
                r = await client.get(f"http://{ep.address}/infer", timeout=5)
                picker.on_result(ep, 0.0, r.status_code, loop.time())
                od.on_result(ep.address, r.status_code, loop.time())
                if not decide_retry(
                    policy, retries_done=tries, status=r.status_code, budget=budget, now=loop.time()
                ).retry:
                    break
                tries += 1
            outcomes.append(r.status_code)
        # Every caller got a 200: retries covered the bad replica until it was ejected.
        assert outcomes == [200] * 20
        assert bad.address in od.ejected()
        hits_while_ejected = bad.hits
        for _ in range(5):
            ep = picker.pick(
                loop.time(), rng, exclude={e for e in eps if e.address in od.ejected()}
            )
            assert ep is not None
            assert ep.address == good.address
        assert bad.hits == hits_while_ejected
        # After baseEjectionTime the replica is brought back by the interval sweep.
        bad.status = 200
        await asyncio.sleep(0.3)
        assert od.tick(loop.time()) == [bad.address]


async def test_connect_failure_is_classified_and_retried(upstreams: list[Upstream]) -> None:
    dead = upstreams[1]
    assert dead.server is not None
    dead.server.close()
    await asyncio.wait_for(dead.server.wait_closed(), 5)
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://{dead.address}/", timeout=5)
    policy = RetryPolicy(attempts=1, retry_on=frozenset({"connect-failure"}))
    assert decide_retry(policy, retries_done=0, failure=Failure.CONNECT_FAILURE).retry
