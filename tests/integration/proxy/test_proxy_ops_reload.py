"""Certificate hot reload on a real sidecar pair, under load, with no failures.

Client -> sidecar A (outbound) -> mTLS -> sidecar B (inbound) -> app. B's
certificate is rotated on disk while requests flow; every request must
succeed, and new handshakes (httpx-free: Python ssl and ``openssl s_client``)
must see the new serial.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
from pathlib import Path
from typing import Any

import pytest
from tests.support.apps import echo_app
from tests.support.binaries import requires
from tests.support.http import http_get
from tests.support.pki import client_context, issue, make_ca, spiffe
from tests.support.processes import (
    ProxyProcess,
    inbound_bootstrap,
    outbound_bootstrap,
    running_proxy,
    write_bootstrap,
)
from tests.support.waiting import STEP_TIMEOUT_S, wait_until

from meshlet.config.bootstrap import IdentityFiles
from meshlet.identity.ca import CertificateAuthority

pytestmark = pytest.mark.integration

SERVER_ID = spiffe("ml", "inference")
CLIENT_ID = spiffe("apps", "client")
MAX_LOAD_S = 60.0  # hard bound on the load loop (it normally ends after 40 requests)


async def _serial_via_admin(proxy: ProxyProcess) -> str:
    _, _, body = await http_get(*proxy.address("admin"), "/certs")
    return str(json.loads(body)["certificates"][0]["serial"])


async def _serial_via_handshake(address: tuple[str, int], ctx: ssl.SSLContext) -> str:
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(*address, ssl=ctx), timeout=STEP_TIMEOUT_S
    )
    try:
        cert: Any = writer.get_extra_info("ssl_object").getpeercert()
        return str(cert["serialNumber"]).lower().lstrip("0")
    finally:
        writer.close()


async def _serial_via_openssl(address: tuple[str, int], files: IdentityFiles) -> str:
    s_client = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"{address[0]}:{address[1]}", "-tls1_3",
        "-cert", str(files.cert), "-key", str(files.key), "-CAfile", str(files.bundle),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    pem, _ = await asyncio.wait_for(s_client.communicate(), timeout=STEP_TIMEOUT_S)
    x509 = await asyncio.create_subprocess_exec(
        "openssl", "x509", "-noout", "-serial",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(x509.communicate(pem), timeout=STEP_TIMEOUT_S)
    return out.decode().strip().split("=", 1)[1].lower().lstrip("0")


async def _stderr_until(proxy: ProxyProcess, text: str) -> None:
    """Read the proxy's stderr into ``stderr_lines`` until a line has ``text`` (or EOF)."""
    assert proxy.process.stderr is not None
    async with asyncio.timeout(STEP_TIMEOUT_S):
        while line := (await proxy.process.stderr.readline()).decode(errors="replace"):
            proxy.stderr_lines.append(line)
            if text in line:
                return


def _rotate(ca: CertificateAuthority, directory: Path) -> None:
    """A new SVID for the same identity, written file by file (key first), as a
    renewal agent would: a poll may well see a new key with the old cert."""
    fresh = directory.parent / "fresh"
    issue(ca, fresh, SERVER_ID)
    for name in ("key.pem", "cert.pem", "bundle.pem"):
        shutil.copyfile(fresh / name, directory / f".{name}.tmp")
        (directory / f".{name}.tmp").replace(directory / name)


@requires("openssl")
async def test_rotation_under_load_drops_nothing(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    async with echo_app() as app:
        b_files = issue(ca, tmp_path / "b", SERVER_ID)
        a_files = issue(ca, tmp_path / "a", CLIENT_ID)
        probe = issue(ca, tmp_path / "probe", spiffe("apps", "probe"))
        b_conf = inbound_bootstrap(b_files, app.port, mtls="STRICT")
        async with running_proxy(write_bootstrap(tmp_path / "b.yaml", b_conf)) as b:
            b_in = b.address("inbound")
            endpoint = {"address": f"127.0.0.1:{b_in[1]}", "identity": SERVER_ID}
            a_conf = outbound_bootstrap(a_files, {"inference": {"endpoints": [endpoint]}})
            async with running_proxy(write_bootstrap(tmp_path / "a.yaml", a_conf)) as a:
                a_out = a.address("outbound")
                probe_ctx = client_context(probe)
                old_serial = await _serial_via_admin(b)
                assert await _serial_via_handshake(b_in, probe_ctx) == old_serial

                rotated = asyncio.Event()
                results: list[int] = []
                results_direct = [0]
                handshake_serials: list[str] = []

                async def load(worker: int) -> None:
                    loop = asyncio.get_running_loop()
                    end = loop.time() + MAX_LOAD_S
                    after = 0
                    while after < 40 and loop.time() < end:
                        if worker == 0:  # a fresh handshake straight to B each time
                            status, _, _ = await http_get(*b_in, "/direct", ssl_ctx=probe_ctx)
                            results_direct[0] += 1
                        else:
                            status, _, _ = await http_get(
                                *a_out, f"/via-a/{worker}", headers={"host": "inference"}
                            )
                        results.append(status)
                        if rotated.is_set():
                            after += 1

                loaders = [asyncio.create_task(load(i)) for i in range(4)]
                await wait_until(lambda: len(results) >= 40)
                _rotate(ca, tmp_path / "b")
                new_serial = ""

                async def poll_admin() -> None:
                    nonlocal new_serial
                    new_serial = await _serial_via_admin(b)

                loop = asyncio.get_running_loop()
                end = loop.time() + STEP_TIMEOUT_S
                while new_serial in ("", old_serial):
                    assert loop.time() < end, "the new certificate never went live"
                    await poll_admin()
                    await asyncio.sleep(0.1)
                rotated.set()
                handshake_serials.append(await _serial_via_handshake(b_in, probe_ctx))
                await asyncio.wait_for(asyncio.gather(*loaders), timeout=MAX_LOAD_S + 10)

                assert results.count(200) == len(results), sorted(set(results))
                assert len(results) >= 160
                assert handshake_serials == [new_serial.lstrip("0")]
                assert await _serial_via_openssl(b_in, probe) == new_serial.lstrip("0")
                # A reports every proxied request as the source side, per Istio.
                _, _, body = await http_get(*a.address("admin"), "/stats/prometheus")
                rows = [
                    line for line in body.decode().splitlines()
                    if line.startswith("istio_requests_total{")
                ]  # fmt: skip
                assert rows
                assert all('reporter="source"' in row for row in rows)
                assert all('destination_service="inference"' in row for row in rows)
                assert all(f'destination_principal="{SERVER_ID}"' in row for row in rows)
                assert all(f'source_principal="{CLIENT_ID}"' in row for row in rows)
                via_a = len(results) - results_direct[0]
                assert sum(int(row.rsplit(" ", 1)[1]) for row in rows) == via_a
                assert await a.stop() == 0
            assert await b.stop() == 0


async def test_a_broken_certificate_file_keeps_the_old_identity(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    async with echo_app() as app:
        files = issue(ca, tmp_path / "b", SERVER_ID)
        probe = client_context(issue(ca, tmp_path / "probe", CLIENT_ID))
        conf = inbound_bootstrap(files, app.port)
        async with running_proxy(write_bootstrap(tmp_path / "b.yaml", conf)) as b:
            old_serial = await _serial_via_admin(b)
            good_cert = files.cert.read_bytes()
            files.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
            await _stderr_until(b, "identity_reload_failed")  # a poll saw the broken file
            assert await _serial_via_admin(b) == old_serial
            status, _, _ = await http_get(*b.address("inbound"), "/still-ok", ssl_ctx=probe)
            assert status == 200
            files.cert.write_bytes(good_cert)  # same cert back: still serving, same serial
            status, _, _ = await http_get(*b.address("inbound"), "/again", ssl_ctx=probe)
            assert status == 200
            assert await b.stop() == 0
            assert "identity_reload_failed" in await b.stderr_text()
