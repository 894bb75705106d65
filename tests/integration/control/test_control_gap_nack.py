"""A snapshot whose TCP service cannot get its port is NACKed as a whole: the
sidecar keeps serving the last good snapshot and its other TCP listener."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from tests.integration.control.conftest import TD, control_url
from tests.support.waiting import eventually

from meshlet.config.bootstrap import Address
from meshlet.control.server import ControlServer
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.proxy.dynamic import DynamicProxy
from meshlet.proxy.dynamic_config import DynamicSettings

pytestmark = pytest.mark.integration

FRONTEND_ID = f"spiffe://{TD}/ns/default/sa/frontend"
ANY = Address(host="127.0.0.1", port=0)


@pytest.fixture
async def tcp_control(tmp_path: Path, ca: CertificateAuthority) -> AsyncIterator[ControlServer]:
    config = tmp_path / "config"
    config.mkdir()
    services = {
        name: {"protocol": "tcp", "workloads": [{"command": ["true"], "port": port}]}
        for name, port in (("db", 5432), ("cache", 6379))
    }
    mesh = {"trust_domain": TD, "services": services, "clients": {"frontend": {"command": ["x"]}}}
    (config / "mesh.yaml").write_text(yaml.safe_dump(mesh))
    server = ControlServer(config_dir=config, ca=ca, hold_s=2.0, poll_s=0.2, resync_grace_s=0.0)
    await server.start(socket.create_server(("127.0.0.1", 0)))
    yield server
    await server.close()


def register(control: ControlServer, workload: str, address: str) -> None:
    """An endpoint of ``workload``, as its sidecar's watch would register it."""
    control.registry.heartbeat(
        proxy_id=f"{workload}-test",
        workload=workload,
        spiffe_id=f"spiffe://{TD}/ns/default/sa/{workload}",
        address=address,
        cert_not_after=time.time() + 3600,
        now_s=control.clock.monotonic(),
    )
    control.notify()


async def test_a_tcp_port_that_is_taken_nacks_the_whole_snapshot(
    tcp_control: ControlServer, ca: CertificateAuthority, tmp_path: Path
) -> None:
    held = socket.create_server(("127.0.0.1", 0))  # db's pinned port: taken
    pinned = Address(host="127.0.0.1", port=held.getsockname()[1])
    bundle = tmp_path / "trust.pem"
    bundle.write_bytes(ca.bundle_pem())
    settings = DynamicSettings(
        control=control_url(tcp_control),
        workload="frontend",
        token=ca.issue_join_token(SpiffeId.parse(FRONTEND_ID), now=time.time()),
        state_dir=tmp_path / "state",
        bundle=bundle,
        inbound=ANY,
        outbound=ANY,
        app=None,
        admin=None,
        tcp=(("db", pinned),),
        audit=None,
    )
    register(tcp_control, "cache", "127.0.0.1:16379")
    proxy = DynamicProxy(settings)
    try:
        await proxy.start()
        assert proxy.tcp is not None
        first = proxy.applied
        cache = proxy.tcp.addresses()
        assert list(cache) == ["cache"]
        assert not cache["cache"].endswith(":0")

        register(tcp_control, "db", "127.0.0.1:15432")

        def nacked() -> str | None:
            record = tcp_control.registry.get(proxy.proxy_id)
            return record.nack.reason if record is not None and record.nack else None

        reason = await eventually(nacked, timeout_s=15.0)
        assert f"cannot listen on {pinned}" in reason
        assert proxy.applied == first  # the last good snapshot keeps serving
        assert proxy.tcp.addresses() == cache
        assert proxy.seen != first
        with socket.create_connection(("127.0.0.1", int(cache["cache"].split(":")[1])), 10):
            pass  # cache's listener still accepts
    finally:
        await proxy.stop(0.5)
        held.close()
