"""The admin server in-process over a real ProxyServer, and the reload poller
over real files: protocol edges the subprocess tests do not reach."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support.pki import issue, make_ca, spiffe
from tests.support.processes import inbound_bootstrap, write_bootstrap
from tests.support.waiting import STEP_TIMEOUT_S

from meshlet.clock import ManualClock
from meshlet.config.bootstrap import load_bootstrap
from meshlet.errors import IdentityError
from meshlet.proxy.admin import AdminServer, certificate_summary
from meshlet.proxy.reload import FileWatcher, IdentityReloader
from meshlet.proxy.server import ProxyServer
from meshlet.telemetry.metrics import GoldenMetrics

pytestmark = pytest.mark.integration

WORKLOAD_ID = spiffe("ml", "inference")


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[AdminServer, ProxyServer, ManualClock]]:
    ca = make_ca(tmp_path)
    files = issue(ca, tmp_path / "id", WORKLOAD_ID, ttl_s=7200)
    config = load_bootstrap(
        # app 127.0.0.1:9 (discard): the admin tests never reach the app
        write_bootstrap(tmp_path / "proxy.yaml", inbound_bootstrap(files, 9))
    )
    clock = ManualClock(wall=1_000.0)
    metrics = GoldenMetrics()
    server = ProxyServer(config, metrics=metrics, clock=clock)
    await server.start()
    admin = AdminServer(server, metrics, clock=clock)
    await admin.start("127.0.0.1", 0)
    try:
        yield admin, server, clock
    finally:
        await admin.close()
        await server.close()


async def _exchange(address: tuple[str, int], raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), timeout=STEP_TIMEOUT_S)
    finally:
        writer.close()


async def test_keep_alive_serves_several_requests_on_one_connection(
    admin: tuple[AdminServer, ProxyServer, ManualClock],
) -> None:
    server, _, _ = admin
    raw = await _exchange(
        server.address,
        b"GET /live HTTP/1.1\r\nhost: a\r\n\r\n"
        b"GET /ready HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    assert raw.count(b"HTTP/1.1 200 OK") == 2
    assert raw.endswith(b"LIVE\n")


CLOSE = b"host: a\r\nconnection: close\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"HEAD /ready HTTP/1.1\r\n" + CLOSE, 200, id="head"),
        pytest.param(b"POST /ready HTTP/1.1\r\n" + CLOSE, 405, id="post"),
        pytest.param(b"GET /x HTTP/1.1\r\n" + CLOSE, 404, id="unknown"),
        pytest.param(b"GET /ready HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc", 400, id="body"),
        pytest.param(b"GARBAGE\r\n\r\n", 400, id="bad-line"),
        pytest.param(b"GET / HTTP/1.1\r\nx: " + b"a" * 70_000 + b"\r\n\r\n", 431, id="huge"),
    ],
)  # fmt: skip
async def test_protocol_edges(
    admin: tuple[AdminServer, ProxyServer, ManualClock], request_bytes: bytes, status: int
) -> None:
    server, _, _ = admin
    raw = await _exchange(server.address, request_bytes)
    assert raw.startswith(b"HTTP/1.1 %d " % status)
    if request_bytes.startswith(b"HEAD"):
        assert raw.endswith(b"\r\n\r\n")  # no body after a HEAD
        assert b"content-length: 5" in raw


async def test_certs_uses_the_injected_clock(
    admin: tuple[AdminServer, ProxyServer, ManualClock],
) -> None:
    server, proxy, clock = admin
    identity = proxy.identity
    assert identity is not None
    raw = await _exchange(server.address, b"GET /certs HTTP/1.1\r\nconnection: close\r\n\r\n")
    (cert,) = json.loads(raw.partition(b"\r\n\r\n")[2])["certificates"]
    assert cert["seconds_to_expiry"] == round(identity.not_after - clock.wall(), 3)
    assert cert["serial"] == identity.serial
    assert cert["not_before"] < cert["not_after"]


async def test_ready_turns_503_when_draining_starts_and_after_close(
    admin: tuple[AdminServer, ProxyServer, ManualClock],
) -> None:
    server, proxy, _ = admin
    ready = b"GET /ready HTTP/1.1\r\nconnection: close\r\n\r\n"
    assert (await _exchange(server.address, ready)).startswith(b"HTTP/1.1 200")
    server.draining = True
    assert (await _exchange(server.address, ready)).startswith(b"HTTP/1.1 503")
    server.draining = False
    await proxy.drain(0.1)
    assert (await _exchange(server.address, ready)).startswith(b"HTTP/1.1 503")


def test_certificate_summary_accepts_timestamps_and_none() -> None:
    class Svid:
        spiffe_id = WORKLOAD_ID
        serial = 255
        not_before = 100.0
        not_after = 400.0

    summary = certificate_summary(Svid(), now=150.0)
    assert summary is not None
    assert summary["serial"] == "ff"
    assert summary["seconds_to_expiry"] == 250.0
    assert certificate_summary(None, now=0.0) is None


def test_file_watcher_sees_rewrites_renames_and_removals(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_text("one")
    watcher = FileWatcher([path])
    assert not watcher.changed()
    replacement = tmp_path / "new.pem"
    replacement.write_text("two")
    replacement.replace(path)  # atomic rename-over: new inode
    assert watcher.changed()
    assert not watcher.changed()
    os.remove(path)
    assert watcher.changed()


def test_reloader_retries_a_failed_reload_until_it_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "cert.pem"
    path.write_text("one")
    outcomes: list[Exception | None] = [IdentityError("key does not match"), None]
    calls = 0

    def reload() -> None:
        nonlocal calls
        calls += 1
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    reloader = IdentityReloader([path], reload)
    assert reloader.poll() is False
    assert calls == 0
    path.write_text("two, longer")
    assert reloader.poll() is False  # half-written rotation: refused, old one kept
    assert reloader.poll() is True  # retried on the next poll without a new change
    assert reloader.poll() is False
    assert calls == 2
    assert (reloader.reloads, reloader.failures) == (1, 1)
