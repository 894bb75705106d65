"""Identity loading for the sidecar's TLS contexts, and handshake failure reasons."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest

from meshlet.config.bootstrap import IdentityFiles
from meshlet.errors import IdentityError
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.proxy.tls import handshake_failure_reason, load_identity, peer_spiffe_id

SID = "spiffe://cluster.local/ns/ml/sa/inference"


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> IdentityFiles:
    tmp = tmp_path_factory.mktemp("svid")
    ca = CertificateAuthority.init(tmp / "ca", "cluster.local", now=time.time())
    svid = ca.issue(SpiffeId.parse(SID), now=time.time(), ttl_s=3600)
    svid.write(tmp / "w")
    return IdentityFiles(
        cert=tmp / "w/cert.pem", key=tmp / "w/key.pem", bundle=tmp / "w/bundle.pem"
    )


def test_load_identity_summarises_the_svid(issued: IdentityFiles) -> None:
    ident = load_identity(issued)
    assert ident.spiffe_id == SID
    assert ident.not_before < time.time() < ident.not_after
    assert ident.not_after - ident.not_before == pytest.approx(3600, abs=120)
    assert int(ident.serial, 16) > 0
    assert ident.bundle_roots == 1
    assert ident.server.minimum_version is ssl.TLSVersion.TLSv1_3
    assert ident.server.verify_mode is ssl.CERT_REQUIRED
    assert ident.client.verify_mode is ssl.CERT_REQUIRED
    assert ident.client.check_hostname is False


def test_missing_file_is_an_identity_error(issued: IdentityFiles, tmp_path: Path) -> None:
    broken = IdentityFiles(cert=issued.cert, key=tmp_path / "nope.pem", bundle=issued.bundle)
    with pytest.raises(IdentityError, match=r"nope\.pem: no such file"):
        load_identity(broken)


def test_mismatched_key_is_an_identity_error(issued: IdentityFiles, tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca2", "cluster.local", now=time.time())
    other = ca.issue(SpiffeId.parse(SID), now=time.time())
    other.write(tmp_path / "o")
    broken = IdentityFiles(cert=issued.cert, key=tmp_path / "o/key.pem", bundle=issued.bundle)
    with pytest.raises(IdentityError, match="cannot load identity"):
        load_identity(broken)


def test_certificate_without_spiffe_id_is_refused(issued: IdentityFiles, tmp_path: Path) -> None:
    root = issued.bundle  # a CA certificate: no URI SAN
    key = tmp_path / "k.pem"
    key.write_bytes(b"")
    with pytest.raises(IdentityError):
        load_identity(IdentityFiles(cert=root, key=key, bundle=issued.bundle))


class _FakeSSLObject:
    def __init__(self, cert: dict[str, object]) -> None:
        self._cert = cert

    def getpeercert(self) -> dict[str, object]:
        return self._cert


@pytest.mark.parametrize(
    ("sans", "expected"),
    [
        pytest.param((("URI", SID),), SID, id="one-uri"),
        pytest.param((("DNS", "x"), ("URI", SID)), SID, id="dns-and-uri"),
        pytest.param((("URI", SID), ("URI", SID + "2")), None, id="two-uris"),
        pytest.param((("URI", "https://x/y"),), None, id="not-spiffe"),
        pytest.param((), None, id="none"),
    ],
)
def test_peer_spiffe_id(sans: tuple[tuple[str, str], ...], expected: str | None) -> None:
    obj = _FakeSSLObject({"subjectAltName": sans})
    assert peer_spiffe_id(obj) == expected  # type: ignore[arg-type]
    assert peer_spiffe_id(None) is None


def _ssl_error(reason: str) -> ssl.SSLError:
    err = ssl.SSLError(1, reason)
    err.reason = reason
    return err


@pytest.mark.parametrize(
    ("exc", "word"),
    [
        (TimeoutError(), "timeout"),
        (_ssl_error("PEER_DID_NOT_RETURN_A_CERTIFICATE"), "no_client_cert"),
        (_ssl_error("TLSV13_ALERT_CERTIFICATE_REQUIRED"), "no_client_cert"),
        (_ssl_error("TLSV1_ALERT_UNKNOWN_CA"), "bad_certificate"),
        (_ssl_error("WRONG_VERSION_NUMBER"), "protocol"),
        (_ssl_error("HTTP_REQUEST"), "protocol"),
        (ConnectionResetError(), "connection_closed"),
        (ValueError(), "other"),
    ],
)
def test_handshake_failure_reason(exc: BaseException, word: str) -> None:
    assert handshake_failure_reason(exc) == word
