"""Opaque TCP mode: mTLS both ways, identity checks, gate, splice and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.apps import tcp_echo, tcp_server
from tests.support.http import http_get
from tests.support.pki import client_context, issue, make_ca, spiffe
from tests.support.processes import (
    inbound_bootstrap,
    outbound_bootstrap,
    running_proxy,
    write_bootstrap,
)
from tests.support.waiting import eventually

from meshlet.config.bootstrap import (
    Address,
    EndpointConfig,
    IdentityFiles,
    MtlsMode,
    ServiceConfig,
    Timeouts,
)
from meshlet.proxy.hooks import GateVerdict, RequestInfo
from meshlet.proxy.tcp import TcpInboundListener, TcpOutboundListener
from meshlet.proxy.tls import LoadedIdentity, load_identity
from meshlet.telemetry.metrics import GoldenMetrics

pytestmark = pytest.mark.integration

SERVER_ID = spiffe("ml", "grpc")
CLIENT_ID = spiffe("apps", "client")
TIMEOUTS = Timeouts(connect_s=2.0, idle_s=5.0, header_read_s=2.0)
T = 10.0  # per-step timeout


@dataclass
class Mesh:
    server_files: IdentityFiles
    client_files: IdentityFiles
    server_identity: LoadedIdentity
    client_identity: LoadedIdentity
    tmp: Path


@pytest.fixture
def mesh(tmp_path: Path) -> Mesh:
    ca = make_ca(tmp_path)
    server_files = issue(ca, tmp_path / "server", SERVER_ID)
    client_files = issue(ca, tmp_path / "client", CLIENT_ID)
    return Mesh(
        server_files=server_files,
        client_files=client_files,
        server_identity=load_identity(server_files),
        client_identity=load_identity(client_files),
        tmp=tmp_path,
    )


def _listening() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


class DenyClients:
    """A gate that refuses one principal (the policy engine plugs in the same way)."""

    def __init__(self, denied: str) -> None:
        self.denied = denied
        self.seen: list[RequestInfo] = []

    def check(self, info: RequestInfo) -> GateVerdict:
        raise AssertionError("HTTP check must not be called in TCP mode")

    def finish(self, info: RequestInfo, verdict: GateVerdict, response_code: int) -> None:
        raise AssertionError("finish must not be called in TCP mode")

    def check_connection(self, info: RequestInfo) -> GateVerdict:
        self.seen.append(info)
        if info.source_principal == self.denied:
            return GateVerdict(allowed=False, status=403, reason="denied by test")
        return GateVerdict(allowed=True)


@contextlib.asynccontextmanager
async def inbound(
    mesh: Mesh,
    app_port: int,
    *,
    mtls: MtlsMode = MtlsMode.STRICT,
    gate: DenyClients | None = None,
    timeouts: Timeouts = TIMEOUTS,
    report_interval_s: float = 15.0,
) -> AsyncIterator[tuple[TcpInboundListener, GoldenMetrics]]:
    metrics = GoldenMetrics()
    listener = TcpInboundListener(
        _listening(), app=Address(host="127.0.0.1", port=app_port), mtls=mtls,
        identity=lambda: mesh.server_identity, metrics=metrics, timeouts=timeouts, gate=gate,
        report_interval_s=report_interval_s,
    )  # fmt: skip
    await listener.start()
    try:
        yield listener, metrics
    finally:
        await listener.close()


@contextlib.asynccontextmanager
async def outbound(
    mesh: Mesh, target: tuple[str, int], expected_id: str
) -> AsyncIterator[tuple[TcpOutboundListener, GoldenMetrics]]:
    metrics = GoldenMetrics()
    service = ServiceConfig(
        name="grpc.ml.svc.cluster.local", protocol="tcp",
        endpoints=(EndpointConfig(address=Address(host=target[0], port=target[1]),
                                  identity=expected_id),),
    )  # fmt: skip
    listener = TcpOutboundListener(
        _listening(), service=service, identity=lambda: mesh.client_identity,
        metrics=metrics, timeouts=TIMEOUTS,
    )  # fmt: skip
    await listener.start()
    try:
        yield listener, metrics
    finally:
        await listener.close()


async def _roundtrip(address: tuple[str, int], payload: bytes, **kw: object) -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(*address, **kw),  # type: ignore[arg-type]
        timeout=T,
    )
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), timeout=T)
    finally:
        writer.close()


async def _eventually(predicate: object, timeout_s: float = T) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_sidecar_pair_splices_bytes_over_mtls(mesh: Mesh) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several chunks both ways
    async with (
        tcp_echo() as app_port,
        inbound(mesh, app_port) as (inb, in_metrics),
        outbound(mesh, inb.address, SERVER_ID) as (outb, out_metrics),
    ):
        echoed = await _roundtrip(outb.address, payload)
        assert echoed == payload
        await _eventually(lambda: in_metrics.tcp_totals()["closed"] == 1)
        await _eventually(lambda: out_metrics.tcp_totals()["closed"] == 1)
    assert in_metrics.tcp_totals() == {
        "opened": 1, "closed": 1, "sent": len(payload), "received": len(payload)
    }  # fmt: skip
    assert out_metrics.tcp_totals()["received"] == len(payload)
    text = in_metrics.render().decode()
    assert f'source_principal="{CLIENT_ID}"' in text
    assert 'connection_security_policy="mutual_tls"' in text
    assert 'reporter="destination"' in text
    out_text = out_metrics.render().decode()
    assert f'destination_principal="{SERVER_ID}"' in out_text
    assert 'reporter="source"' in out_text


async def test_outbound_refuses_a_peer_with_the_wrong_identity(mesh: Mesh) -> None:
    async with (
        tcp_echo() as app_port,
        inbound(mesh, app_port) as (inb, _),
        outbound(mesh, inb.address, spiffe("ml", "someone-else")) as (outb, metrics),
    ):
        reader, writer = await asyncio.open_connection(*outb.address)
        writer.write(b"hello")
        data = b""
        with contextlib.suppress(ConnectionError):  # closed (or reset: unread bytes)
            data = await asyncio.wait_for(reader.read(), timeout=T)
        assert data == b""
        writer.close()
    assert metrics.handshake_failures() == {"wrong_identity": 1}
    assert metrics.tcp_totals()["opened"] == 0


async def test_strict_inbound_refuses_plaintext(mesh: Mesh) -> None:
    async with tcp_echo() as app_port, inbound(mesh, app_port) as (inb, metrics):
        reader, writer = await asyncio.open_connection(*inb.address)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            data = await asyncio.wait_for(reader.read(), timeout=T)
            assert b"HTTP" not in data
        writer.close()
        await _eventually(lambda: sum(metrics.handshake_failures().values()) == 1)
    assert metrics.tcp_totals()["opened"] == 0


async def test_inbound_requires_a_client_certificate(mesh: Mesh) -> None:
    import ssl

    no_cert = ssl.create_default_context(cafile=str(mesh.server_files.bundle))
    no_cert.check_hostname = False
    async with tcp_echo() as app_port, inbound(mesh, app_port) as (inb, metrics):
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await _roundtrip(inb.address, b"x" * 10, ssl=no_cert)
        await _eventually(lambda: sum(metrics.handshake_failures().values()) == 1)
    assert metrics.tcp_totals()["opened"] == 0


async def test_gate_sees_the_peer_identity_and_can_deny(mesh: Mesh) -> None:
    gate = DenyClients(CLIENT_ID)
    async with tcp_echo() as app_port, inbound(mesh, app_port, gate=gate) as (inb, metrics):
        ctx = client_context(mesh.client_files)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await _roundtrip(inb.address, b"ping", ssl=ctx)
    (info,) = gate.seen
    assert info.source_principal == CLIENT_ID
    assert info.mtls is True
    assert (info.method, info.path) == ("", "")
    assert metrics.tcp_totals()["opened"] == 0


async def test_permissive_accepts_tls_and_plaintext(mesh: Mesh) -> None:
    async with (
        tcp_echo() as app_port,
        inbound(mesh, app_port, mtls=MtlsMode.PERMISSIVE) as (inb, metrics),
    ):
        assert await _roundtrip(inb.address, b"plain bytes") == b"plain bytes"
        ctx = client_context(mesh.client_files)
        assert await _roundtrip(inb.address, b"tls bytes", ssl=ctx) == b"tls bytes"
        await _eventually(lambda: metrics.tcp_totals()["closed"] == 2)
    text = metrics.render().decode()
    assert 'connection_security_policy="none"' in text
    assert 'connection_security_policy="mutual_tls"' in text


async def test_app_down_is_counted_and_connection_closed(mesh: Mesh) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        dead_port = placeholder.getsockname()[1]
    async with inbound(mesh, dead_port) as (inb, metrics):
        ctx = client_context(mesh.client_files)
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            await _roundtrip(inb.address, b"ping", ssl=ctx)
    assert metrics.upstream_errors() == {"connect": 1}


async def test_drain_waits_for_live_connections_then_cuts(mesh: Mesh) -> None:
    async with tcp_echo() as app_port, inbound(mesh, app_port) as (inb, _):
        ctx = client_context(mesh.client_files)
        reader, writer = await asyncio.open_connection(*inb.address, ssl=ctx)
        writer.write(b"a")
        assert await asyncio.wait_for(reader.readexactly(1), timeout=T) == b"a"
        await asyncio.wait_for(inb.drain(0.2), timeout=T)
        assert inb.active_connections == 0
        assert await asyncio.wait_for(reader.read(), timeout=T) == b""
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(asyncio.open_connection(*inb.address), timeout=T)


async def test_tcp_mode_through_two_real_proxies(tmp_path: Path) -> None:
    """`protocol: tcp` in bootstrap files: app -> A (outbound tcp service) -> B -> echo."""
    ca = make_ca(tmp_path)
    b_files = issue(ca, tmp_path / "b", SERVER_ID)
    a_files = issue(ca, tmp_path / "a", CLIENT_ID)
    payload = os.urandom(256 * 1024)
    async with tcp_echo() as app_port:
        b_conf = inbound_bootstrap(b_files, app_port, protocol="tcp")
        async with running_proxy(write_bootstrap(tmp_path / "b.yaml", b_conf)) as b:
            b_port = b.address("inbound")[1]
            grpc = {
                "protocol": "tcp",
                "listen": "127.0.0.1:0",
                "endpoints": [{"address": f"127.0.0.1:{b_port}", "identity": SERVER_ID}],
            }
            a_conf = outbound_bootstrap(a_files, {"grpc": grpc})
            async with running_proxy(write_bootstrap(tmp_path / "a.yaml", a_conf)) as a:
                host, port = str(a.ready[0]["tcp"]["grpc"]).rsplit(":", 1)
                assert await _roundtrip((host, int(port)), payload) == payload

                async def b_stats() -> str:
                    return (await http_get(*b.address("admin"), "/stats/prometheus"))[2].decode()

                def value(text: str, name: str) -> int:
                    rows = [line for line in text.splitlines() if line.startswith(name + "{")]
                    return sum(int(line.rsplit(" ", 1)[1]) for line in rows)

                async def b_closed() -> str:
                    text = await b_stats()
                    return text if value(text, "istio_tcp_connections_closed_total") else ""

                # the close reaches B's counters asynchronously
                text = await eventually(b_closed)
                assert f'source_principal="{CLIENT_ID}"' in text
                assert value(text, "istio_tcp_connections_closed_total") == 1
                assert value(text, "istio_tcp_received_bytes_total") == len(payload)
                assert value(text, "istio_tcp_sent_bytes_total") == len(payload)
                assert await a.stop() == 0
            assert await b.stop() == 0


@contextlib.asynccontextmanager
async def ticker(count: int, every_s: float) -> AsyncIterator[int]:
    """An app that only talks: ``count`` lines, one every ``every_s``, then closes."""

    async def serve(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for i in range(count):
                writer.write(b"tick %d\n" % i)
                await writer.drain()
                await asyncio.sleep(every_s)
        finally:
            writer.close()

    async with tcp_server(serve) as port:
        yield port


async def test_half_close_reaches_a_plaintext_app(mesh: Mesh) -> None:
    async with (
        tcp_echo() as app_port,
        inbound(mesh, app_port, mtls=MtlsMode.PERMISSIVE) as (inb, _),
    ):
        reader, writer = await asyncio.open_connection(*inb.address)
        writer.write(b"request then EOF")
        writer.write_eof()  # the echo app answers only what it got before EOF
        assert await asyncio.wait_for(reader.read(), timeout=T) == b"request then EOF"
        writer.close()


async def test_idle_counts_silence_both_ways(mesh: Mesh) -> None:
    # A tick every 0.2 s against a 1 s idle timeout: a stalled event loop on a
    # loaded machine must not make a gap look like silence.
    short = Timeouts(connect_s=2.0, idle_s=1.0, header_read_s=2.0)
    async with (
        ticker(10, 0.2) as app_port,  # talks for 2 s; the client never sends a byte
        inbound(mesh, app_port, timeouts=short) as (inb, _),
    ):
        ctx = client_context(mesh.client_files)
        reader, writer = await asyncio.open_connection(*inb.address, ssl=ctx)
        data = await asyncio.wait_for(reader.read(-1), timeout=T)
        writer.close()
    assert data.count(b"tick") == 10  # not cut after 1 s of client silence


async def test_silent_connection_is_closed_after_idle(mesh: Mesh) -> None:
    short = Timeouts(connect_s=2.0, idle_s=0.3, header_read_s=2.0)
    async with tcp_echo() as app_port, inbound(mesh, app_port, timeouts=short) as (inb, metrics):
        ctx = client_context(mesh.client_files)
        reader, writer = await asyncio.open_connection(*inb.address, ssl=ctx)
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), timeout=T) == b""
        assert asyncio.get_running_loop().time() - started < 5
        writer.close()
        await _eventually(lambda: metrics.tcp_totals()["closed"] == 1)


async def test_open_connections_report_bytes_periodically(mesh: Mesh) -> None:
    async with (
        tcp_echo() as app_port,
        inbound(mesh, app_port, report_interval_s=0.05) as (inb, metrics),
    ):
        ctx = client_context(mesh.client_files)
        reader, writer = await asyncio.open_connection(*inb.address, ssl=ctx)
        writer.write(b"x" * 1000)
        assert len(await asyncio.wait_for(reader.readexactly(1000), timeout=T)) == 1000
        # Still open: the bytes show up without waiting for the close.
        await _eventually(lambda: metrics.tcp_totals()["received"] == 1000)
        assert metrics.tcp_totals()["closed"] == 0
        writer.write(b"y" * 24)
        await asyncio.wait_for(reader.readexactly(24), timeout=T)
        writer.close()
        await _eventually(lambda: metrics.tcp_totals()["closed"] == 1)
    assert metrics.tcp_totals()["received"] == 1024  # no double counting at close
    assert metrics.tcp_totals()["sent"] == 1024
