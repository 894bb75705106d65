"""Sidecar-to-sidecar mTLS: identities checked both ways, inbound modes, reload."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import time
from pathlib import Path

import httpx
import pytest
from tests.support.binaries import requires
from tests.support.pki import Pki
from tests.support.sidecars import CLIENT_ID, OTHER_ID, SERVER_ID, TD, start_pair, stop_pair

from meshlet.config.bootstrap import IdentityFiles, Limits, MtlsMode
from meshlet.errors import IdentityError
from meshlet.identity.ca import CertificateAuthority

pytestmark = pytest.mark.integration
T = 10.0


def _client_ctx(files: IdentityFiles | None, bundle: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(bundle))
    ctx.check_hostname = False
    if files is not None:
        ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


async def _raw_https_get(port: int, ctx: ssl.SSLContext) -> tuple[bytes, bytes]:
    """(response bytes, peer cert DER) for one GET /headers over TLS."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=""), T
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.write(b"GET /headers HTTP/1.1\r\nhost: inference\r\nconnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), T)
    writer.close()
    return data, der


async def _refused(port: int, ctx: ssl.SSLContext) -> bool:
    """True when the server ends the connection without an HTTP response (TLS 1.3
    reports a refused client certificate only after the client's handshake ends)."""
    try:
        data, _ = await _raw_https_get(port, ctx)
    except (ssl.SSLError, ConnectionError, OSError):
        return True
    return data == b""


async def test_wrong_endpoint_identity_is_refused(pki: Pki) -> None:
    pair = await start_pair(pki, endpoint_identity=OTHER_ID)
    try:
        async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
            r = await client.get("http://inference/hello")
        assert r.status_code == 503
        assert r.headers["x-meshlet-error"] == "upstream_connect"
        assert OTHER_ID in r.text
        assert pair.out_metrics.handshake_failures() == {"wrong_identity": 1}
        assert pair.app.requests == 0
    finally:
        await stop_pair(pair)


async def test_strict_inbound_refuses_plaintext(pki: Pki) -> None:
    pair = await start_pair(pki)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.inbound_port)
        writer.write(b"GET /hello HTTP/1.1\r\nhost: inference\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), T)
        writer.close()
        assert b"hello" not in data
        assert not data.startswith(b"HTTP/1.1 200")
        assert pair.app.requests == 0
        assert sum(pair.in_metrics.handshake_failures().values()) == 1
    finally:
        await stop_pair(pair)


async def test_strict_inbound_requires_a_client_certificate(pki: Pki) -> None:
    pair = await start_pair(pki)
    try:
        files = pki.files(CLIENT_ID, "c2")
        ctx = _client_ctx(None, files.bundle)
        assert await _refused(pair.inbound_port, ctx)
        assert pair.app.requests == 0
    finally:
        await stop_pair(pair)


async def test_certificate_from_another_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    pair = await start_pair(pki)
    try:
        rogue = CertificateAuthority.init(tmp_path / "rogue", TD, now=time.time())
        rogue_files = pki.files(CLIENT_ID, "legit")  # for the server bundle only
        from meshlet.identity.spiffeid import SpiffeId

        svid = rogue.issue(SpiffeId.parse(CLIENT_ID), now=time.time())
        svid.write(tmp_path / "rogue-client")
        files = IdentityFiles(
            cert=tmp_path / "rogue-client/cert.pem",
            key=tmp_path / "rogue-client/key.pem",
            bundle=rogue_files.bundle,
        )
        assert await _refused(pair.inbound_port, _client_ctx(files, files.bundle))
        assert pair.app.requests == 0
        assert pair.in_metrics.handshake_failures().get("bad_certificate", 0) >= 1
    finally:
        await stop_pair(pair)


@requires("openssl")
async def test_direct_mtls_client_sees_identity_and_tls13(pki: Pki) -> None:
    pair = await start_pair(pki)
    try:
        files = pki.files(CLIENT_ID, "direct")
        proc = await asyncio.create_subprocess_exec(
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{pair.inbound_port}",
            "-cert",
            str(files.cert),
            "-cert_chain",
            str(files.cert),
            "-key",
            str(files.key),
            "-CAfile",
            str(files.bundle),
            "-quiet",
            "-ign_eof",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(
            proc.communicate(
                b"GET /headers HTTP/1.1\r\nhost: inference\r\nconnection: close\r\n\r\n"
            ),
            T,
        )
        assert b"HTTP/1.1 200" in out, err
        assert f"URI={CLIENT_ID}".encode() in out
        assert b"verify return:1" in err
        data, _ = await _raw_https_get(pair.inbound_port, _client_ctx(files, files.bundle))
        assert data.startswith(b"HTTP/1.1 200")
    finally:
        await stop_pair(pair)


@pytest.mark.parametrize("mode", [MtlsMode.PERMISSIVE, MtlsMode.DISABLE])
async def test_plaintext_accepted_in_permissive_and_disable(pki: Pki, mode: MtlsMode) -> None:
    pair = await start_pair(pki, mtls=mode)
    try:
        async with httpx.AsyncClient(timeout=T) as client:
            r = await client.get(
                f"http://127.0.0.1:{pair.inbound_port}/headers", headers={"host": "inference"}
            )
        assert r.status_code == 200
        headers = dict(r.json()["headers"])
        assert "x-forwarded-client-cert" not in headers
        assert pair.in_metrics.request_count(reporter="destination", response_code=200) == 1
        assert 'connection_security_policy="none"' in pair.in_metrics.render().decode()
        if mode is MtlsMode.PERMISSIVE:  # and mTLS from the peer sidecar still works
            async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
                r2 = await client.get("http://inference/headers")
            assert dict(r2.json()["headers"])["x-forwarded-client-cert"].endswith(CLIENT_ID)
    finally:
        await stop_pair(pair)


async def test_reload_identity_swaps_for_new_handshakes_only(pki: Pki) -> None:
    pair = await start_pair(pki)
    try:
        files = pki.files(CLIENT_ID, "direct")
        before = pair.inbound.identity
        assert before is not None
        assert before.spiffe_id == SERVER_ID
        async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
            assert (await client.get("http://inference/hello")).status_code == 200
            fresh = pki.files(SERVER_ID, "server-new")
            cfg_files = pair.inbound.config.identity
            for name in ("cert", "key", "bundle"):
                shutil.copy(getattr(fresh, name), getattr(cfg_files, name))
            pair.inbound.reload_identity()
            after = pair.inbound.identity
            assert after is not None
            assert after.serial != before.serial
            # the pooled connection (old certificate) keeps working
            assert (await client.get("http://inference/hello")).status_code == 200
        _, der = await _raw_https_get(pair.inbound_port, _client_ctx(files, files.bundle))
        from cryptography import x509

        assert format(x509.load_der_x509_certificate(der).serial_number, "x") == after.serial
        # a broken file keeps the current identity
        cfg_files.key.write_text("not a key")
        with pytest.raises(IdentityError):
            pair.inbound.reload_identity()
        assert pair.inbound.identity is after
        data, _ = await _raw_https_get(pair.inbound_port, _client_ctx(files, files.bundle))
        assert data.startswith(b"HTTP/1.1 200")
    finally:
        await stop_pair(pair)


async def test_reload_under_traffic_drops_nothing(pki: Pki) -> None:
    # No idle upstream connections are kept, so every request is a new mTLS
    # handshake with the inbound sidecar while its certificate rotates.
    pair = await start_pair(pki, limits=Limits(max_idle_per_endpoint=0))
    try:
        cfg_files = pair.inbound.config.identity
        serials = set()

        async def traffic() -> int:
            ok = 0
            async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as c:
                for _ in range(60):  # bounded
                    r = await c.get("http://inference/hello")
                    ok += r.status_code == 200
            return ok

        task = asyncio.create_task(traffic())
        for i in range(3):
            await asyncio.sleep(0.05)
            fresh = pki.files(SERVER_ID, f"rot-{i}")
            for name in ("cert", "key", "bundle"):
                shutil.copy(getattr(fresh, name), getattr(cfg_files, name))
            pair.inbound.reload_identity()
            assert pair.inbound.identity is not None
            serials.add(pair.inbound.identity.serial)
        assert await asyncio.wait_for(task, 60) == 60
        assert len(serials) == 3
        assert pair.in_metrics.handshake_failures() == {}
        assert pair.app.connections == 60  # nothing pooled: a new connection per request
    finally:
        await stop_pair(pair)
