"""Requests queued for an inference pool's slot, through real sidecars.

The pool allows one request per endpoint (``meshlet.io/max-concurrency-per-
endpoint: "1"``); the replica holds every request until the test lets it go, one
at a time. When a slot frees, exactly one waiting request may start (never all
of them at once), and the Critical one goes before a Standard one that queued
earlier.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tests.integration.traffic.mesh_support import Mesh, Replica, mesh_of
from tests.support.inference_yaml import inference_model, pool_routing
from tests.support.pki import Pki
from tests.support.waiting import wait_until

from meshlet.proxy.outbound import OutboundRouter
from meshlet.proxy.routing import ClusterRuntime

pytestmark = pytest.mark.integration

T = 15.0
HOST = {"host": "inference"}

POOL = pool_routing(
    inference_model("chat", "Critical"),
    inference_model("std", "Standard"),
    max_concurrency_per_endpoint=1,
)


@dataclass
class Held(Replica):
    """A replica that answers each request only when the test releases it."""

    gates: list[asyncio.Event] = field(default_factory=list)

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        await super()._answer(writer)

    def release_one(self) -> None:
        next(g for g in self.gates if not g.is_set()).set()


def pool_runtime(mesh: Mesh) -> ClusterRuntime | None:
    listener = mesh.outbound.outbound_listener
    router = listener.router if listener is not None else None
    assert isinstance(router, OutboundRouter)
    assert router.traffic is not None
    return router.traffic.runtimes.get("llm-pool")


def in_flight(mesh: Mesh) -> int:
    rt = pool_runtime(mesh)
    return 0 if rt is None else sum(rt.outstanding().values())


def waiting(mesh: Mesh) -> int:
    rt = pool_runtime(mesh)
    return 0 if rt is None else len(rt.waiting)


def post(client: httpx.AsyncClient, model: str) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(client.post(f"/v2/models/{model}/infer", headers=HOST))


async def test_a_freed_slot_lets_exactly_one_queued_request_start(
    tpki: Pki, tmp_path: Path
) -> None:
    gpu = Held("gpu", {"app": "vllm"})
    async with mesh_of(tpki, tmp_path, [gpu], POOL) as mesh, mesh.client() as client:
        tasks = [post(client, "chat")]
        await wait_until(lambda: gpu.hits == 1, T)
        tasks += [post(client, "chat") for _ in range(3)]
        await wait_until(lambda: waiting(mesh) == 3, T)
        for served in range(1, 4):
            gpu.release_one()
            await wait_until(lambda s=served: gpu.hits == s + 1, T)  # type: ignore[misc]
            # The slot went to one waiting request; the others still wait.
            assert in_flight(mesh) == 1
            assert waiting(mesh) == 3 - served
        gpu.release_one()
        answers = await asyncio.wait_for(asyncio.gather(*tasks), T)
        assert [r.status_code for r in answers] == [200] * 4


async def test_critical_leaves_the_line_before_an_earlier_standard(
    tpki: Pki, tmp_path: Path
) -> None:
    gpu = Held("gpu", {"app": "vllm"})
    async with mesh_of(tpki, tmp_path, [gpu], POOL) as mesh, mesh.client() as client:
        tasks = [post(client, "std")]
        await wait_until(lambda: gpu.hits == 1, T)
        tasks.append(post(client, "std"))
        await wait_until(lambda: waiting(mesh) == 1, T)
        tasks.append(post(client, "chat"))
        await wait_until(lambda: waiting(mesh) == 2, T)
        for served in range(1, 3):
            gpu.release_one()
            await wait_until(lambda s=served: gpu.hits == s + 1, T)  # type: ignore[misc]
        gpu.release_one()
        answers = await asyncio.wait_for(asyncio.gather(*tasks), T)
        assert [r.status_code for r in answers] == [200] * 3
        paths = [line.split(b" ")[1] for line, _, _ in gpu.requests]
        assert paths == [b"/v2/models/std/infer", b"/v2/models/chat/infer", b"/v2/models/std/infer"]
