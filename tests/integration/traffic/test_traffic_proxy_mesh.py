"""Smoke tests of the small real mesh in ``mesh_support``.

client (httpx) -> outbound ``ProxyServer`` (with ``outbound.routing``) -> mTLS ->
one inbound ``ProxyServer`` per replica -> a tiny asyncio upstream per replica
whose answers change on cue (status, delay, hang, SSE tokens). Everything binds
127.0.0.1 port 0; every wait is bounded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.integration.traffic.mesh_support import SUBSETS, mesh_of, two_versions
from tests.support.pki import Pki

pytestmark = pytest.mark.integration


async def test_unrouted_host_still_served_and_routed_headers_applied(
    tpki: Pki, tmp_path: Path
) -> None:
    vs = (
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inference, namespace: ml}
spec:
  hosts: [inference]
  http:
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new}
    headers: {request: {set: {x-added: "yes"}}, response: {add: {x-resp: "r"}}}
    route: [{destination: {host: inference, subset: v1}}]
---"""
        + SUBSETS
    )
    async with (
        mesh_of(tpki, tmp_path, two_versions(), vs) as mesh,
        mesh.client() as client,
    ):
        r = await asyncio.wait_for(client.get("/old/x?q=1", headers={"host": "inference"}), 10)
        assert r.status_code == 200
        assert r.headers["x-served-by"] == "v1"
        assert r.headers["x-resp"] == "r"
        line, headers, _ = mesh.replicas["v1"].requests[-1]
        assert line == b"GET /new/x?q=1 HTTP/1.1"
        assert headers[b"x-added"] == b"yes"
        # The route matches only /old: anything else on a routed host is 404 NR.
        r = await asyncio.wait_for(client.get("/other", headers={"host": "inference"}), 10)
        assert r.status_code == 404
        assert r.headers["x-meshlet-error"] == "no_route"
