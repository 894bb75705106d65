"""The inbound gate hook (sync and async verdicts, header edits, finish) and
draining: in-flight requests finish, new connections are refused."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import httpx
import pytest
from tests.support.pki import Pki
from tests.support.sidecars import CLIENT_ID, LOCAL, start_pair, stop_pair
from tests.support.waiting import wait_until

from meshlet.proxy.hooks import GateVerdict, RequestInfo

pytestmark = pytest.mark.integration
T = 10.0


class RecordingGate:
    """Denies paths under /deny, answers /slow asynchronously, edits headers."""

    def __init__(self) -> None:
        self.checked: list[RequestInfo] = []
        self.finished: list[tuple[str, bool, int]] = []

    def check(self, info: RequestInfo) -> GateVerdict | Awaitable[GateVerdict]:
        self.checked.append(info)
        if info.path.startswith("/deny"):
            return GateVerdict(allowed=False, status=403, reason="path /deny is not allowed")
        if info.path.startswith("/hello"):
            return self._later()
        return GateVerdict(
            allowed=True,
            set_headers=((b"x-authenticated", b"yes"),),
            remove_headers=(b"authorization",),
        )

    async def _later(self) -> GateVerdict:
        await asyncio.sleep(0)
        return GateVerdict(allowed=True)

    def finish(self, info: RequestInfo, verdict: GateVerdict, response_code: int) -> None:
        self.finished.append((info.path, verdict.allowed, response_code))

    def check_connection(self, info: RequestInfo) -> GateVerdict:
        return GateVerdict(allowed=True)


async def test_gate_sees_identity_and_decides(pki: Pki) -> None:
    gate = RecordingGate()
    pair = await start_pair(pki, gate=gate)
    try:
        async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
            denied = await client.get("http://inference/deny/x")
            allowed = await client.get(
                "http://inference/headers", headers={"authorization": "Bearer secret"}
            )
            later = await client.get("http://inference/hello")
        assert denied.status_code == 403
        assert denied.headers["x-meshlet-error"] == "denied"
        assert "path /deny" in denied.text
        headers = dict(allowed.json()["headers"])
        assert headers["x-authenticated"] == "yes"
        assert "authorization" not in headers
        assert later.text == "hello"
        info = gate.checked[0]
        assert info.source_principal == CLIENT_ID
        assert info.mtls is True
        assert info.method == "GET"
        assert info.host == "inference"
        assert info.request_id
        assert gate.finished == [
            ("/deny/x", False, 403),
            ("/headers", True, 200),
            ("/hello", True, 200),
        ]
        assert pair.app.requests == 2
    finally:
        await stop_pair(pair)


async def test_drain_finishes_in_flight_and_refuses_new(pki: Pki) -> None:
    pair = await start_pair(pki)
    try:
        async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
            in_flight = asyncio.create_task(client.get("http://inference/sse?n=3&gap=0.2"))
            await wait_until(lambda: pair.app.requests == 1)  # in flight, not still queued
            port = pair.outbound_port
            await asyncio.wait_for(pair.outbound.drain(T), 2 * T)
            r = await asyncio.wait_for(in_flight, T)
        assert r.status_code == 200
        assert r.text.count("data: token-") == 3
        assert not pair.outbound.ready
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(asyncio.open_connection(LOCAL, port), T)
    finally:
        await stop_pair(pair)


async def test_drain_deadline_cuts_what_is_left(pki: Pki) -> None:
    pair = await start_pair(pki)
    try:
        reader, writer = await asyncio.open_connection(LOCAL, pair.outbound_port)
        writer.write(b"GET /hang HTTP/1.1\r\nhost: inference\r\n\r\n")
        await wait_until(lambda: pair.app.requests == 1)  # the app holds it
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(pair.outbound.drain(0.3), T)
        # Without the deadline the drain would last until the 10 s upstream timeout.
        assert loop.time() - start < 5.0
        assert await asyncio.wait_for(reader.read(), T) == b""
        writer.close()
    finally:
        await stop_pair(pair)
