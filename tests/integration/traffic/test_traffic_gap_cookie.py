"""``consistentHash.httpCookie`` with a ``ttl``: the sidecar generates the cookie.

Two real replicas behind their sidecars; httpx clients keep cookies as a browser
does. A client without the cookie gets one on its first response (with the TTL
as Max-Age, the path, HttpOnly) and then always reaches the same replica;
different clients get different cookies and so spread over both replicas.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.integration.traffic.mesh_support import Replica, dr, mesh_of, vs
from tests.support.pki import Pki

pytestmark = pytest.mark.integration

T = 15.0
HOST = {"host": "inference"}
ROUTE = "  - route: [{destination: {host: inference}}]"


def routing(cookie: str) -> str:
    return vs(ROUTE) + dr(f"{{loadBalancer: {{consistentHash: {{httpCookie: {cookie}}}}}}}")


async def test_a_client_without_the_cookie_gets_one_and_sticks(tpki: Pki, tmp_path: Path) -> None:
    reps = [Replica("a", {}), Replica("b", {})]
    cfg = routing("{name: session, ttl: 120s, path: /}")
    async with mesh_of(tpki, tmp_path, reps, cfg) as mesh:
        async with mesh.client() as client:
            first = await asyncio.wait_for(client.get("/chat", headers=HOST), T)
            assert first.status_code == 200
            set_cookie = first.headers["set-cookie"]
            assert set_cookie.startswith('session="')
            assert set_cookie.endswith('"; Max-Age=120; Path=/; HttpOnly')
            assert client.cookies.get("session") is not None
            home = first.headers["x-served-by"]
            for _ in range(30):  # 2^-29 to stay put by chance without the cookie
                r = await asyncio.wait_for(client.get("/chat", headers=HOST), T)
                assert r.status_code == 200
                assert r.headers["x-served-by"] == home
                assert "set-cookie" not in r.headers  # it has one now
        homes = set()
        # Fresh clients land by their random cookie's hash; the ring splits keys
        # about evenly (512 points per replica), so even a 35/65 split leaves
        # P(all 40 on one replica) < 0.65^40 = 3e-8.
        for _ in range(40):
            async with mesh.client() as fresh:
                r1 = await asyncio.wait_for(fresh.get("/chat", headers=HOST), T)
                r2 = await asyncio.wait_for(fresh.get("/chat", headers=HOST), T)
                assert r1.headers["x-served-by"] == r2.headers["x-served-by"]
                homes.add(r1.headers["x-served-by"])
        assert homes == {"a", "b"}


async def test_without_a_ttl_no_cookie_is_generated(tpki: Pki, tmp_path: Path) -> None:
    reps = [Replica("a", {}), Replica("b", {})]
    async with (
        mesh_of(tpki, tmp_path, reps, routing("{name: session}")) as mesh,
        mesh.client() as client,
    ):
        r = await asyncio.wait_for(client.get("/chat", headers=HOST), T)
        assert r.status_code == 200
        assert "set-cookie" not in r.headers
        # A cookie the client brings still keys the hash: one replica for it.
        served = set()
        for _ in range(10):
            r = await asyncio.wait_for(
                client.get("/chat", headers={**HOST, "cookie": "session=u-42"}), T
            )
            served.add(r.headers["x-served-by"])
        assert len(served) == 1
