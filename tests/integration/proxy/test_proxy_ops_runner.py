"""A real ``meshlet proxy`` process: admin endpoints, SIGTERM drain, workers.

One process is both sidecars here: its outbound service points at its own
inbound listener with its own SPIFFE ID as the expected identity, so a request
takes the full path app -> outbound -> mTLS -> inbound -> app.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
from pathlib import Path
from typing import Any

import pytest
from tests.support.apps import EchoApp, echo_app
from tests.support.http import http_get
from tests.support.pki import client_context, issue, make_ca, spiffe
from tests.support.processes import identity_block, running_proxy, write_bootstrap
from tests.support.waiting import STEP_TIMEOUT_S, eventually, wait_until

from meshlet.config.bootstrap import IdentityFiles

pytestmark = pytest.mark.integration

WORKLOAD_ID = spiffe("ml", "inference")
CLIENT_ID = spiffe("apps", "client")


def _config(files: IdentityFiles, app: EchoApp, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "identity": identity_block(files),
        "admin": "127.0.0.1:0",
        "workload": {"name": "inference", "namespace": "ml"},
        "inbound": {"listen": "127.0.0.1:0", "app": f"127.0.0.1:{app.port}", "mtls": "STRICT"},
        "timeouts": {"drain_s": 5.0},
    }
    config.update(extra)
    return config


def _self_loop(config: dict[str, Any], inbound_port: int) -> dict[str, Any]:
    """Outbound service 'inference' -> this proxy's own inbound port."""
    config = dict(config)
    config["outbound"] = {
        "listen": "127.0.0.1:0",
        "services": {
            "inference": {
                "endpoints": [{"address": f"127.0.0.1:{inbound_port}", "identity": WORKLOAD_ID}]
            }
        },
    }
    return config


async def test_admin_endpoints_report_a_real_proxy(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    files = issue(ca, tmp_path / "id", WORKLOAD_ID)
    client = issue(ca, tmp_path / "client", CLIENT_ID)
    async with echo_app() as app:
        path = write_bootstrap(tmp_path / "proxy.yaml", _config(files, app))
        async with running_proxy(path) as proxy:
            admin = proxy.address("admin")
            inbound = proxy.address("inbound")
            status, _, body = await http_get(*admin, "/ready")
            assert (status, body) == (200, b"LIVE\n")
            assert (await http_get(*admin, "/live"))[0] == 200

            status, _, _ = await http_get(*inbound, "/hello", ssl_ctx=client_context(client))
            assert status == 200

            status, headers, body = await http_get(*admin, "/stats/prometheus")
            assert status == 200
            assert headers["content-type"].startswith("text/plain; version=0.0.4")
            text = body.decode()
            assert "istio_requests_total{" in text
            assert f'source_principal="{CLIENT_ID}"' in text
            assert f'destination_principal="{WORKLOAD_ID}"' in text
            assert 'response_code="200"' in text
            assert "meshlet_process_resident_memory_bytes" in text

            status, _, body = await http_get(*admin, "/config_dump")
            assert status == 200
            dump = json.loads(body)
            assert dump["identity"]["spiffe_id"] == WORKLOAD_ID
            assert b"PRIVATE KEY" not in body
            assert (tmp_path / "id" / "key.pem").read_bytes()[:200] not in body

            status, _, body = await http_get(*admin, "/certs")
            (cert,) = json.loads(body)["certificates"]
            assert cert["spiffe_id"] == WORKLOAD_ID
            assert 3000 < cert["seconds_to_expiry"] <= 3600
            assert cert["serial"]

            assert (await http_get(*admin, "/nope"))[0] == 404
            assert await proxy.stop() == 0


async def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    files = issue(ca, tmp_path / "id", WORKLOAD_ID)
    async with echo_app() as app:
        # First start learns the inbound port; the outbound then loops back to it.
        # The slow request (4 s) outlasts the wait for /ready to turn 503 on a
        # loaded machine; the drain allows it 20 s.
        base = _config(files, app, timeouts={"drain_s": 20.0})
        path = write_bootstrap(tmp_path / "proxy.yaml", base)
        async with running_proxy(path) as probe:
            inbound_port = probe.address("inbound")[1]
            await probe.stop()
        base["inbound"]["listen"] = f"127.0.0.1:{inbound_port}"
        path = write_bootstrap(tmp_path / "proxy.yaml", _self_loop(base, inbound_port))
        async with running_proxy(path) as proxy:
            outbound = proxy.address("outbound")
            slow = asyncio.create_task(
                http_get(*outbound, "/slow?ms=4000", headers={"host": "inference"}, timeout_s=30)
            )
            # Wait until the app holds the request, then ask the proxy to stop.
            await wait_until(lambda: bool(app.headers_seen))
            proxy.process.send_signal(signal.SIGTERM)

            async def not_ready() -> bool:  # the admin stays up while draining, answering 503
                return (await http_get(*proxy.address("admin"), "/ready"))[0] == 503

            await eventually(not_ready)
            assert not slow.done()
            status, _, body = await slow
            assert status == 200, body
            assert json.loads(body)["path"] == "/slow?ms=4000"
            assert await asyncio.wait_for(proxy.process.wait(), STEP_TIMEOUT_S) == 0
        with pytest.raises(ConnectionRefusedError):
            await http_get(*outbound, "/", headers={"host": "inference"})


async def test_drain_deadline_cuts_requests_that_take_too_long(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    files = issue(ca, tmp_path / "id", WORKLOAD_ID)
    client = issue(ca, tmp_path / "client", CLIENT_ID)
    async with echo_app() as app:
        config = _config(files, app, timeouts={"drain_s": 0.3})
        path = write_bootstrap(tmp_path / "proxy.yaml", config)
        async with running_proxy(path) as proxy:
            inbound = proxy.address("inbound")
            slow = asyncio.create_task(
                http_get(*inbound, "/slow?ms=10000", ssl_ctx=client_context(client))
            )
            await wait_until(lambda: bool(app.headers_seen))
            started = asyncio.get_running_loop().time()
            assert await proxy.stop() == 0
            assert asyncio.get_running_loop().time() - started < 6.0  # not the 10 s request
            with pytest.raises((ConnectionError, ssl.SSLError, ValueError, IndexError)):
                await slow  # cut: no complete response


async def test_two_workers_both_serve(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    files = issue(ca, tmp_path / "id", WORKLOAD_ID)
    client = issue(ca, tmp_path / "client", CLIENT_ID)
    ctx = client_context(client)
    async with echo_app() as app:
        path = write_bootstrap(tmp_path / "proxy.yaml", _config(files, app))
        async with running_proxy(path, workers=2) as proxy:
            assert {r["worker"] for r in proxy.ready} == {0, 1}
            assert proxy.address("inbound", 0) == proxy.address("inbound", 1)
            assert proxy.address("admin", 0) == proxy.address("admin", 1)  # one, merged
            inbound = proxy.address("inbound")
            for _ in range(40):  # 40 new connections: both sockets get some
                assert (await http_get(*inbound, "/w", ssl_ctx=ctx))[0] == 200
            # Each worker counts a request after its response is written: poll.
            text = await eventually(lambda: _scrape_when(proxy.address("admin"), 40))
            counts = [
                int(float(line.rsplit(" ", 1)[1]))
                for line in text.splitlines()
                if line.startswith("meshlet_worker_requests_total{")
            ]
            assert sum(counts) == 40
            assert min(counts) > 0, counts
            assert await proxy.stop() == 0


async def _scrape_when(admin: tuple[str, int], total: int) -> str | None:
    _, _, body = await http_get(*admin, "/stats/prometheus")
    return body.decode() if _requests_total(body.decode()) >= total else None


def _requests_total(text: str) -> int:
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("istio_requests_total{")
    )


async def test_access_log_lines_reach_the_file(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    files = issue(ca, tmp_path / "id", WORKLOAD_ID)
    client = issue(ca, tmp_path / "client", CLIENT_ID)
    log_path = tmp_path / "access.log"
    async with echo_app() as app:
        config = _config(files, app, access_log={"path": str(log_path)})
        path = write_bootstrap(tmp_path / "proxy.yaml", config)
        async with running_proxy(path) as proxy:
            inbound = proxy.address("inbound")
            ctx = client_context(client)
            for i in range(3):
                status, _, _ = await http_get(
                    *inbound, f"/v1/item/{i}?api_key=SECRET", ssl_ctx=ctx,
                    headers={"user-agent": "ops-test/1"},
                )  # fmt: skip
                assert status == 200
            # Flushed within about a second by the housekeeping task, not per request.
            await wait_until(lambda: log_path.exists() and log_path.read_text().count("\n") == 3)
            assert await proxy.stop() == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [line["path"] for line in lines] == ["/v1/item/0", "/v1/item/1", "/v1/item/2"]
    first = lines[0]
    assert first["reporter"] == "destination"
    assert first["method"] == "GET"
    assert first["response_code"] == 200
    assert first["source_principal"] == CLIENT_ID
    assert first["destination_principal"] == WORKLOAD_ID
    assert first["connection_security_policy"] == "mutual_tls"
    assert first["user_agent"] == "ops-test/1"
    assert first["request_id"]
    assert "SECRET" not in log_path.read_text()


async def test_a_dead_worker_stops_the_sidecar(tmp_path: Path) -> None:
    """A worker killed from outside takes the whole sidecar down (non-zero exit) so
    its supervisor restarts it, instead of serving on with half the capacity."""
    ca = make_ca(tmp_path)
    files = issue(ca, tmp_path / "id", WORKLOAD_ID)
    async with echo_app() as app:
        path = write_bootstrap(tmp_path / "proxy.yaml", _config(files, app))
        async with running_proxy(path, workers=2) as proxy:
            pids = {int(r["worker"]): int(r["pid"]) for r in proxy.ready}
            os.kill(pids[1], signal.SIGKILL)
            code = await asyncio.wait_for(proxy.process.wait(), STEP_TIMEOUT_S)
            assert code == 128 + signal.SIGKILL
            with pytest.raises(ProcessLookupError):
                os.kill(pids[0], 0)  # the surviving worker was stopped too
