"""Our SVIDs as others see them: OpenSSL's verifier, the ``spiffe`` library, Python ``ssl``."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from spiffe.bundle.x509_bundle.x509_bundle import X509Bundle
from spiffe.spiffe_id.spiffe_id import SpiffeId as LibSpiffeId
from spiffe.spiffe_id.spiffe_id import TrustDomain
from spiffe.svid.x509_svid import X509Svid
from tests.support.binaries import requires

from meshlet.identity.ca import CertificateAuthority, IssuedSvid
from meshlet.identity.spiffeid import SpiffeId
from meshlet.identity.x509 import make_csr, spiffe_id_from_cert_der

pytestmark = pytest.mark.integration

TD = "cluster.local"
WEB = SpiffeId.for_workload(TD, "default", "web")
DB = SpiffeId.for_workload(TD, "prod", "db")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    # Real wall time: OpenSSL and ssl check validity against the real clock.
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca"), TD, now=time.time())


def _openssl_verify(outdir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "verify",
            *extra,
            "-CAfile",
            str(outdir / "bundle.pem"),
            "-untrusted",
            str(outdir / "cert.pem"),
            str(outdir / "cert.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("purpose", ["sslserver", "sslclient"])
@requires("openssl")
def test_openssl_verifies_issued_svid(
    ca: CertificateAuthority, tmp_path: Path, purpose: str
) -> None:
    ca.issue(WEB, now=time.time()).write(tmp_path)
    result = _openssl_verify(tmp_path, "-purpose", purpose, "-x509_strict")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": OK")


@requires("openssl")
def test_openssl_verifies_csr_signed_svid(ca: CertificateAuthority, tmp_path: Path) -> None:
    csr, key = make_csr(DB)
    chain = ca.sign_csr(csr, proven_id=DB, now=time.time())
    IssuedSvid(
        spiffe_id=DB,
        cert_chain_pem=chain,
        key_pem=key,
        bundle_pem=ca.bundle_pem(),
        not_before=0,
        not_after=0,
    ).write(tmp_path)
    result = _openssl_verify(tmp_path, "-x509_strict")
    assert result.returncode == 0, result.stderr


@requires("openssl")
def test_openssl_rejects_svid_from_another_ca(ca: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority.init(tmp_path / "other", TD, now=time.time())
    other.issue(WEB, now=time.time()).write(tmp_path / "svid")
    (tmp_path / "svid" / "bundle.pem").write_bytes(ca.bundle_pem())
    result = _openssl_verify(tmp_path / "svid")
    assert result.returncode != 0
    assert "unable to get" in result.stderr + result.stdout


@requires("openssl")
def test_openssl_verifies_both_roots_during_rotation(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", TD, now=time.time())
    ca.issue(WEB, now=time.time()).write(tmp_path / "old")
    rotated = ca.rotate_root(now=time.time())
    rotated.issue(WEB, now=time.time()).write(tmp_path / "new")
    for name in ("old", "new"):
        (tmp_path / name / "bundle.pem").write_bytes(rotated.bundle_pem())
        result = _openssl_verify(tmp_path / name, "-x509_strict")
        assert result.returncode == 0, (name, result.stderr)


def test_spiffe_library_accepts_svid_and_bundle(ca: CertificateAuthority) -> None:
    issued = ca.issue(WEB, now=time.time())
    svid = X509Svid.parse(issued.cert_chain_pem, issued.key_pem)
    assert svid.spiffe_id == LibSpiffeId(str(WEB))
    assert len(svid.cert_chain) == 2
    bundle = X509Bundle.parse(TrustDomain(TD), issued.bundle_pem)
    assert len(bundle.x509_authorities) == 1


def test_spiffe_library_accepts_csr_signed_chain(ca: CertificateAuthority) -> None:
    csr, key = make_csr(DB)
    svid = X509Svid.parse(ca.sign_csr(csr, proven_id=DB, now=time.time()), key)
    assert str(svid.spiffe_id) == str(DB)


def _context(issued: IssuedSvid, tmp: Path, *, server: bool) -> ssl.SSLContext:
    issued.write(tmp)
    purpose = ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    ctx.load_verify_locations(tmp / "bundle.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    if not server:
        ctx.check_hostname = False  # SPIFFE: the peer is named by its URI SAN, not DNS
    return ctx


async def test_mtls_handshake_reads_peer_spiffe_ids(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    now = time.time()
    server_ctx = _context(ca.issue(DB, now=now), tmp_path / "server", server=True)
    client_ctx = _context(ca.issue(WEB, now=now), tmp_path / "client", server=False)
    seen: asyncio.Future[SpiffeId] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        seen.set_result(spiffe_id_from_cert_der(sslobj.getpeercert(binary_form=True)))
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), timeout=10
        )
        peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert spiffe_id_from_cert_der(peer) == DB
        assert await asyncio.wait_for(reader.read(), timeout=10) == b"ok"
        assert await asyncio.wait_for(seen, timeout=10) == WEB
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), timeout=10)


async def test_mtls_refuses_a_client_from_another_ca(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    now = time.time()
    stranger_ca = CertificateAuthority.init(tmp_path / "stranger", TD, now=now)
    server_ctx = _context(ca.issue(DB, now=now), tmp_path / "server", server=True)
    client_ctx = _context(stranger_ca.issue(WEB, now=now), tmp_path / "client", server=False)
    client_ctx.load_verify_locations(cadata=ca.bundle_pem().decode())  # client trusts server
    handled = asyncio.Event()

    async def handle(_r: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handled.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises((ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError)):
            await _connect_and_read_one_byte(port, client_ctx)
        assert not handled.is_set()


async def _connect_and_read_one_byte(port: int, ctx: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx), timeout=10
    )
    try:
        # TLS 1.3: the client learns that the server refused it on its first read.
        return await asyncio.wait_for(reader.readexactly(1), timeout=10)
    finally:
        writer.close()
