"""Opaque TCP services in control-plane snapshots, with real processes: the
caller's dynamic sidecar opens a listener when a ``protocol: tcp`` service gets
an endpoint, follows endpoint changes without dropping live connections, and
closes the listener when the service leaves the config directory, while the
other service's connections carry on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.control.conftest import TD
from tests.support.apps import tcp_server
from tests.support.http import http_get
from tests.support.processes import Proc, spawn, tail
from tests.support.waiting import eventually

from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DB_ID = f"spiffe://{TD}/ns/default/sa/db"
CACHE_ID = f"spiffe://{TD}/ns/default/sa/cache"
FRONTEND_ID = f"spiffe://{TD}/ns/default/sa/frontend"
STEP_S = 30.0  # one step with several processes on a loaded 2-core machine


def mesh_yaml(ports: dict[str, int], *, cache: bool = True) -> str:
    def workload(name: str) -> dict[str, Any]:
        return {"name": name, "service_account": "db", "command": ["true"], "port": ports[name]}

    services: dict[str, Any] = {
        "db": {"protocol": "tcp", "workloads": [workload("db-a"), workload("db-b")]}
    }
    if cache:
        services["cache"] = {
            "protocol": "tcp",
            "workloads": [{"command": ["true"], "port": ports["cache"]}],
        }
    mesh = {
        "trust_domain": TD,
        "services": services,
        "clients": {"frontend": {"command": ["true"]}},
    }
    return yaml.safe_dump(mesh, sort_keys=False)


def write_whole(path: Path, text: str) -> None:
    """Replace ``path`` in one rename, so the control plane's poll never reads a
    half-written file (the hidden temporary file is not part of the config)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@contextlib.asynccontextmanager
async def tagged_echo(tag: bytes) -> AsyncIterator[int]:
    """A TCP server answering each chunk with ``tag:`` + the chunk."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(tag + b":" + data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async with tcp_server(serve) as port:
        yield port


def sidecar_args(
    url: str, ca: CertificateAuthority, workload: str, spiffe_id: str, state: Path
) -> list[str]:
    token = ca.issue_join_token(SpiffeId.parse(spiffe_id), now=time.time())
    return [
        "proxy", "--control", url, "--token", token, "--workload", workload,
        "--bundle", str(ca.directory / "bundle.pem"), "--state-dir", str(state),
        "--inbound", "127.0.0.1:0", "--outbound", "127.0.0.1:0", "--admin", "127.0.0.1:0",
    ]  # fmt: skip


async def tcp_services(proc: Proc) -> dict[str, Any]:
    """The TCP services in a sidecar's /config_dump (service -> entry)."""
    host, _, port = str(proc.ready["admin"]).rpartition(":")
    status, _, body = await http_get(host, int(port), "/config_dump", timeout_s=10.0)
    assert status == 200, body
    services = json.loads(body)["outbound"]["services"]
    return {k: v for k, v in services.items() if v["protocol"] == "tcp"}


class Conn:
    """One client connection through the frontend's sidecar."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, address: str) -> Conn:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 10.0)
        return cls(reader, writer)

    async def echo(self, payload: bytes) -> bytes:
        """Send ``payload``; the tag of the backend that echoed it."""
        self.writer.write(payload)
        await self.writer.drain()
        got = b""
        while not got.endswith(payload):
            chunk = await asyncio.wait_for(self.reader.read(65536), 10.0)
            assert chunk, f"closed after {got!r}"
            got += chunk
        return got[: -len(payload) - 1]

    def close(self) -> None:
        self.writer.close()


async def refused(address: str) -> bool:
    """True when nothing accepts on ``address`` any more."""
    try:
        conn = await Conn.open(address)
    except OSError:
        return True
    conn.close()
    return False


async def test_tcp_listeners_follow_the_config_directory(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    procs: list[Proc] = []
    async with (
        tagged_echo(b"a") as port_a,
        tagged_echo(b"b") as port_b,
        tagged_echo(b"cache") as port_cache,
    ):
        ports = {"db-a": port_a, "db-b": port_b, "cache": port_cache}
        write_whole(config / "mesh.yaml", mesh_yaml(ports))
        try:
            control = await spawn(
                ["control", "--config-dir", str(config), "--ca-dir", str(ca.directory),
                 "--listen", "127.0.0.1:0", "--hold", "2"],
                tmp_path / "control.log",
            )  # fmt: skip
            procs.append(control)
            url = f"https://{control.ready['listen']}"

            async def sidecar(workload: str, spiffe_id: str) -> Proc:
                proc = await spawn(
                    sidecar_args(url, ca, workload, spiffe_id, tmp_path / workload),
                    tmp_path / f"{workload}.log",
                )
                procs.append(proc)
                return proc

            await sidecar("db-a", DB_ID)
            await sidecar("cache", CACHE_ID)
            front = await sidecar("frontend", FRONTEND_ID)

            async def both_listening() -> dict[str, Any] | None:
                tcp = await tcp_services(front)
                return tcp if {"db", "cache"} <= tcp.keys() else None

            tcp = await eventually(both_listening, timeout_s=STEP_S)
            db_address, cache_address = tcp["db"]["listen"], tcp["cache"]["listen"]
            assert not db_address.endswith(":0")
            assert [e["identity"] for e in tcp["db"]["endpoints"]] == [DB_ID]

            db_conn = await Conn.open(db_address)
            cache_conn = await Conn.open(cache_address)
            assert await db_conn.echo(b"one") == b"a"  # over mTLS via db-a's sidecar
            assert await cache_conn.echo(b"one") == b"cache"

            # An endpoint joins: same listener, live connection untouched.
            await sidecar("db-b", DB_ID)

            async def two_endpoints() -> bool:
                return len((await tcp_services(front))["db"]["endpoints"]) == 2

            await eventually(two_endpoints, timeout_s=STEP_S)
            assert (await tcp_services(front))["db"]["listen"] == db_address
            assert await db_conn.echo(b"two") == b"a"
            tags = set()
            for i in range(4):  # round robin over the two endpoints
                conn = await Conn.open(db_address)
                tags.add(await conn.echo(b"new-%d" % i))
                conn.close()
            assert tags == {b"a", b"b"}

            # The cache service leaves the config: its port closes; db's live
            # connection carries on.
            write_whole(config / "mesh.yaml", mesh_yaml(ports, cache=False))

            async def cache_gone() -> bool:
                return "cache" not in await tcp_services(front)

            await eventually(cache_gone, timeout_s=STEP_S)
            await eventually(lambda: refused(cache_address), timeout_s=STEP_S)
            assert await db_conn.echo(b"three") == b"a"
            assert (await tcp_services(front))["db"]["listen"] == db_address

            # ...and comes back: a listener again (the cache sidecar re-registers).
            write_whole(config / "mesh.yaml", mesh_yaml(ports))

            async def cache_back() -> str | None:
                entry = (await tcp_services(front)).get("cache")
                return entry["listen"] if entry else None

            new_cache = await eventually(cache_back, timeout_s=STEP_S)
            conn = await Conn.open(new_cache)
            assert await conn.echo(b"back") == b"cache"
            conn.close()
            assert await db_conn.echo(b"four") == b"a"
            db_conn.close()
            cache_conn.close()
            log = front.log.read_text()
            assert "tcp_listener_closed" in log, tail(front.log)
            assert "snapshot_rejected" not in log, tail(front.log)
        finally:
            for proc in reversed(procs):
                await proc.stop()
