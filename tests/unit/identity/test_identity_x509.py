"""X.509 helpers: reading SPIFFE IDs from certificates, PEM errors, chain checks, summaries."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from meshlet.errors import IdentityError
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.inspect import summarize
from meshlet.identity.pemfiles import write_atomic
from meshlet.identity.spiffeid import SpiffeId
from meshlet.identity.x509 import (
    load_pem_certificates,
    load_pem_private_key,
    spiffe_id_from_cert_der,
    verify_chain,
)

NOW = 1_700_000_000.0
TD = "cluster.local"
WEB = SpiffeId.for_workload(TD, "default", "web")
KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca"), TD, now=NOW)


def _self_signed(names: list[x509.GeneralName], *, ca: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(KEY.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime.fromtimestamp(NOW - 10, tz=dt.UTC))
        .not_valid_after(dt.datetime.fromtimestamp(NOW + 3600, tz=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(KEY, hashes.SHA256())


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        pytest.param([], "no subjectAltName", id="no-san"),
        pytest.param([x509.DNSName("web")], "found 0", id="dns-only"),
        pytest.param([x509.UniformResourceIdentifier(str(WEB))] * 2, "found 2", id="two-uris"),
        pytest.param(
            [x509.UniformResourceIdentifier("https://web")], "is not 'spiffe'", id="https-uri"
        ),
        pytest.param(
            [x509.UniformResourceIdentifier("spiffe://td/a//b")], "empty segment", id="bad-id"
        ),
    ],
)
def test_spiffe_id_from_cert_der_refusals(names: list[x509.GeneralName], reason: str) -> None:
    with pytest.raises(IdentityError, match=reason):
        spiffe_id_from_cert_der(_der(_self_signed(names)))


def test_spiffe_id_from_cert_der_accepts_extra_dns_names() -> None:
    # The proxy reads peers' certificates; a peer's extra DNS SAN does not change its ID.
    cert = _self_signed([x509.UniformResourceIdentifier(str(WEB)), x509.DNSName("web")])
    assert spiffe_id_from_cert_der(_der(cert)) == WEB


def test_spiffe_id_from_garbage_der() -> None:
    with pytest.raises(IdentityError, match="not valid DER"):
        spiffe_id_from_cert_der(b"\x30\x03\x02\x01\x01")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"", "no PEM", id="empty"),
        pytest.param(b"hello", "no PEM", id="text"),
        pytest.param(
            b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            "malformed",
            id="truncated",
        ),
    ],
)
def test_malformed_certificate_pem(data: bytes, reason: str) -> None:
    with pytest.raises(IdentityError, match=reason):
        load_pem_certificates(data)


def test_malformed_and_wrong_type_keys() -> None:
    with pytest.raises(IdentityError, match="malformed"):
        load_pem_private_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(IdentityError, match="expected an ECDSA key"):
        load_pem_private_key(rsa_pem)


def test_verify_chain_problems(ca: CertificateAuthority) -> None:
    issued = ca.issue(WEB, now=NOW)
    leaf, issuer = load_pem_certificates(issued.cert_chain_pem)
    roots = list(ca.roots)
    with pytest.raises(IdentityError, match="empty"):
        verify_chain([], roots, now=NOW)
    with pytest.raises(IdentityError, match="does not chain"):
        verify_chain([leaf], roots, now=NOW)  # issuer missing
    with pytest.raises(IdentityError, match="not valid until"):
        verify_chain([leaf, issuer], roots, now=NOW - 3600)
    other = ca.issue(WEB, now=NOW)
    other_leaf = load_pem_certificates(other.cert_chain_pem)[0]
    with pytest.raises(IdentityError, match="is not a CA"):
        verify_chain([leaf, other_leaf], roots, now=NOW)
    with pytest.raises(IdentityError, match="no subjectAltName"):
        verify_chain([issuer], roots, now=NOW)
    ca_with_uri = _self_signed([x509.UniformResourceIdentifier(str(WEB))], ca=True)
    with pytest.raises(IdentityError, match="leaf certificate is a CA"):
        verify_chain([ca_with_uri], [ca_with_uri], now=NOW)
    # The root itself may be sent along; it still verifies.
    assert verify_chain([leaf, issuer, roots[0]], roots, now=NOW).spiffe_id == WEB


def test_summarize_svid_and_bundle(ca: CertificateAuthority) -> None:
    issued = ca.issue(WEB, now=NOW, ttl_s=7200)
    s = summarize(issued.cert_chain_pem, bundle_pem=issued.bundle_pem, now=NOW)
    assert s.spiffe_id == str(WEB)
    assert not s.is_ca
    assert s.key == "ECDSA P-256"
    assert s.key_usage == ("digitalSignature", "serverAuth", "clientAuth")
    assert s.chain_length == 2
    assert s.chains_to_bundle is True
    text = "\n".join(s.lines(now=NOW))
    assert "expires in 2h" in text
    assert "OK: chains" in text
    assert "EXPIRED" in "\n".join(s.lines(now=NOW + 7201))
    assert "NOT YET VALID" in "\n".join(s.lines(now=NOW - 3600))


def test_summarize_ca_certificate_and_foreign_bundle(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    bundle = summarize(ca.bundle_pem(), bundle_pem=ca.bundle_pem(), now=NOW)
    assert bundle.is_ca
    assert bundle.spiffe_id is None
    assert bundle.chains_to_bundle is True
    issuer_pem = ca.issuer_certificate.public_bytes(serialization.Encoding.PEM)
    assert summarize(issuer_pem, bundle_pem=ca.bundle_pem(), now=NOW).chains_to_bundle
    other = CertificateAuthority.init(tmp_path, TD, now=NOW)
    s = summarize(ca.issue(WEB, now=NOW).cert_chain_pem, bundle_pem=other.bundle_pem(), now=NOW)
    assert s.chains_to_bundle is False
    assert "FAILED: certificate does not chain" in "\n".join(s.lines(now=NOW))
    assert summarize(issuer_pem, bundle_pem=None, now=NOW).chains_to_bundle is None


def test_summarize_refuses_a_non_svid_leaf() -> None:
    pem = _self_signed([x509.DNSName("web")]).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(IdentityError, match=r"not an X\.509-SVID"):
        summarize(pem, bundle_pem=None, now=NOW)


def test_write_atomic_sets_mode_despite_umask_and_leaves_no_temp(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "cert.pem", b"a", mode=0o644)
    finally:
        os.umask(old)
    write_atomic(tmp_path / "key.pem", b"secret", mode=0o600)
    write_atomic(tmp_path / "key.pem", b"secret2", mode=0o600)  # replaces in place
    assert (tmp_path / "cert.pem").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "key.pem").read_bytes() == b"secret2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.pem", "key.pem"]
