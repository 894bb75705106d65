"""The request path end to end: app client -> outbound -> mTLS -> inbound -> app."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from tests.support.binaries import requires
from tests.support.pki import Pki
from tests.support.sidecars import CLIENT_ID, SERVER_ID, Pair, start_pair, stop_pair

from meshlet.clock import MonotonicClock
from meshlet.telemetry.accesslog import AccessLog

pytestmark = pytest.mark.integration
T = 10.0


async def test_forward_proxy_absolute_form_with_httpx(pair: Pair) -> None:
    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
        r = await client.get("http://inference:8080/hello")
    assert r.status_code == 200
    assert r.text == "hello"
    assert pair.out_metrics.request_count(reporter="source", response_code=200) == 1
    assert pair.in_metrics.request_count(reporter="destination", response_code=200) == 1


async def test_origin_form_with_host_header(pair: Pair) -> None:
    async with httpx.AsyncClient(base_url=pair.proxy_url, timeout=T) as client:
        r = await client.get("/headers", headers={"host": "inference"})
    assert r.status_code == 200
    seen = json.loads(r.text)
    assert seen["target"] == "/headers"


@pytest.mark.parametrize("host", ["inference", "inference:80", "INFERENCE:8080"])
async def test_service_matched_with_or_without_port(pair: Pair, host: str) -> None:
    async with httpx.AsyncClient(base_url=pair.proxy_url, timeout=T) as client:
        r = await client.get("/hello", headers={"host": host})
    assert r.status_code == 200


async def test_unknown_service_is_502_with_reason(pair: Pair) -> None:
    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
        r = await client.get("http://nosuch.example/hello")
    assert r.status_code == 502
    assert r.headers["x-meshlet-error"] == "no_route"
    assert "nosuch.example" in r.text
    assert r.text.count("\n") == 1
    assert pair.out_metrics.request_count(response_code=502) == 1


async def test_headers_rewritten_for_the_app(pair: Pair) -> None:
    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
        r = await client.get(
            "http://inference/headers",
            headers={
                "connection": "keep-alive, x-hop",
                "x-hop": "must go",
                "keep-alive": "timeout=5",
                "proxy-authorization": "Basic abc",
                "x-forwarded-client-cert": "By=spoofed;URI=spiffe://evil/ns/x/sa/y",
                "x-keep": "stays",
            },
        )
    headers = dict(json.loads(r.text)["headers"])
    assert headers["x-keep"] == "stays"
    for gone in ("x-hop", "keep-alive", "proxy-authorization", "transfer-encoding"):
        assert gone not in headers
    assert headers["x-forwarded-client-cert"] == f"By={SERVER_ID};URI={CLIENT_ID}"
    assert headers["x-forwarded-for"] == "127.0.0.1, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert len(headers["x-request-id"]) > 8
    assert headers["host"] == "inference"


async def test_request_id_generated_unique_and_kept_when_given(pair: Pair) -> None:
    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
        ids = set()
        for _ in range(5):
            r = await client.get("http://inference/headers")
            ids.add(dict(json.loads(r.text)["headers"])["x-request-id"])
        given = await client.get("http://inference/headers", headers={"x-request-id": "abc-1"})
    assert len(ids) == 5
    assert dict(json.loads(given.text)["headers"])["x-request-id"] == "abc-1"


async def test_keep_alive_reuses_connections_both_sides(pair: Pair) -> None:
    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
        for _ in range(20):
            r = await client.get("http://inference/hello")
            assert r.status_code == 200
    assert pair.app.requests == 20
    assert pair.app.connections == 1


@requires("curl")
async def test_curl_with_http_proxy_env(pair: Pair) -> None:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "-D",
        "-",
        "http://inference/hello",
        env={"http_proxy": pair.proxy_url, "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), T)
    assert proc.returncode == 0, err
    assert out.startswith(b"HTTP/1.1 200")
    assert out.endswith(b"\r\n\r\nhello")


async def test_metrics_carry_principals_both_sides(pair: Pair) -> None:
    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
        await client.get("http://inference/hello")
    out_text = pair.out_metrics.render().decode()
    in_text = pair.in_metrics.render().decode()
    for text in (out_text, in_text):
        assert f'source_principal="{CLIENT_ID}"' in text
        assert f'destination_principal="{SERVER_ID}"' in text
        assert 'connection_security_policy="mutual_tls"' in text
    assert 'reporter="source"' in out_text
    assert 'reporter="destination"' in in_text


async def test_workload_defaults_come_from_the_spiffe_id(pair: Pair) -> None:
    w = pair.inbound.workload
    assert (w.name, w.namespace, w.service_account) == ("inference", "ml", "inference")
    dump = pair.inbound.config_dump()
    assert dump["identity"]["spiffe_id"] == SERVER_ID
    assert "BEGIN" not in str(dump)  # paths only, never key or certificate bytes


async def test_access_log_records_both_sides(pki: Pki) -> None:
    lines: list[bytes] = []
    log = AccessLog(lines.append, clock=MonotonicClock(), max_entries=1)
    pair = await start_pair(pki, access_log=log)
    try:
        async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
            await client.get("http://inference/hello?x=1", headers={"user-agent": "t/1"})
        log.flush()
        records = {r["reporter"]: r for chunk in lines for r in map(json.loads, chunk.splitlines())}
        assert set(records) == {"source", "destination"}
        for r in records.values():
            assert r["response_code"] == 200
            assert "/hello" in r["path"]
            assert r["user_agent"] == "t/1"
            assert r["source_principal"] == CLIENT_ID
            assert r["destination_principal"] == SERVER_ID
    finally:
        await stop_pair(pair)
