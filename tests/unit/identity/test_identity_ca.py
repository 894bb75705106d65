"""The CA: persistence, the SVID profile, CSR checks and root rotation (no sockets)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from meshlet.errors import IdentityError
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.identity.svid import ISSUER_TTL_S
from meshlet.identity.x509 import (
    load_pem_certificates,
    make_csr,
    spiffe_id_from_cert,
    spiffe_id_from_cert_der,
    verify_chain,
)

NOW = 1_700_000_000.0
TD = "cluster.local"
WEB = SpiffeId.for_workload(TD, "default", "web")
DB = SpiffeId.for_workload(TD, "default", "db")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca"), TD, now=NOW)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_keys_0600_and_load_round_trips(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", TD, now=NOW)
    assert _mode(tmp_path / "ca" / "root-key.pem") == 0o600
    assert _mode(tmp_path / "ca" / "issuer-key.pem") == 0o600
    loaded = CertificateAuthority.load(tmp_path / "ca")
    assert loaded.trust_domain == TD
    assert loaded.bundle_pem() == ca.bundle_pem()
    assert loaded.issuer_certificate == ca.issuer_certificate


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = CertificateAuthority.init(tmp_path, TD, now=NOW)
    with pytest.raises(IdentityError, match="already exists"):
        CertificateAuthority.init(tmp_path, TD, now=NOW)
    assert CertificateAuthority.load(tmp_path).bundle_pem() == first.bundle_pem()
    second = CertificateAuthority.init(tmp_path, "other.td", now=NOW, force=True)
    assert second.bundle_pem() != first.bundle_pem()
    assert CertificateAuthority.load(tmp_path).trust_domain == "other.td"


def test_init_refuses_bad_trust_domain(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="uppercase"):
        CertificateAuthority.init(tmp_path, "Cluster.Local", now=NOW)
    assert not (tmp_path / "ca.json").exists()


def test_load_refuses_missing_dir_and_readable_keys(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no CA here"):
        CertificateAuthority.load(tmp_path / "nothing")
    CertificateAuthority.init(tmp_path, TD, now=NOW)
    (tmp_path / "issuer-key.pem").chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        CertificateAuthority.load(tmp_path)


def test_load_refuses_malformed_pem(tmp_path: Path) -> None:
    CertificateAuthority.init(tmp_path, TD, now=NOW)
    (tmp_path / "issuer-cert.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(IdentityError, match=r"issuer-cert\.pem: malformed"):
        CertificateAuthority.load(tmp_path)


def test_svid_profile_follows_the_x509_svid_spec(ca: CertificateAuthority) -> None:
    issued = ca.issue(WEB, now=NOW)
    chain = load_pem_certificates(issued.cert_chain_pem)
    assert len(chain) == 2
    leaf, issuer = chain
    assert issuer == ca.issuer_certificate
    ext = leaf.extensions
    san = ext.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert isinstance(san, x509.SubjectAlternativeName)
    assert list(san) == [x509.UniformResourceIdentifier(str(WEB))]
    bc = ext.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS)
    assert bc.critical
    assert isinstance(bc.value, x509.BasicConstraints)
    assert bc.value.ca is False
    ku = ext.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    assert isinstance(ku, x509.KeyUsage)
    assert ku.digital_signature
    assert not ku.key_cert_sign
    assert not ku.crl_sign
    eku = ext.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    assert isinstance(eku, x509.ExtendedKeyUsage)
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    pub = leaf.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert isinstance(pub.curve, ec.SECP256R1)
    assert issued.not_after - NOW == pytest.approx(86400.0)
    assert spiffe_id_from_cert(leaf) == WEB
    assert spiffe_id_from_cert_der(leaf.public_bytes(serialization.Encoding.DER)) == WEB


def test_issued_chain_verifies_against_bundle(ca: CertificateAuthority) -> None:
    issued = ca.issue(WEB, now=NOW)
    chain = load_pem_certificates(issued.cert_chain_pem)
    roots = load_pem_certificates(issued.bundle_pem)
    assert verify_chain(chain, roots, now=NOW + 10).spiffe_id == WEB
    with pytest.raises(IdentityError, match="expired"):
        verify_chain(chain, roots, now=issued.not_after + 1)
    other = CertificateAuthority.init(Path(str(ca.directory) + "-other"), TD, now=NOW)
    with pytest.raises(IdentityError, match="does not chain"):
        verify_chain(chain, list(other.roots), now=NOW)


def test_lifetime_is_capped_by_the_issuer(ca: CertificateAuthority) -> None:
    issued = ca.issue(WEB, now=NOW, ttl_s=10 * ISSUER_TTL_S)
    issuer_end = ca.issuer_certificate.not_valid_after_utc.timestamp()
    assert issued.not_after == issuer_end
    with pytest.raises(IdentityError, match="issuer CA expired"):
        ca.issue(WEB, now=issuer_end + 1)


def test_issue_write_uses_0600_for_the_key(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.issue(WEB, now=NOW).write(tmp_path / "out")
    assert _mode(tmp_path / "out" / "key.pem") == 0o600
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"cert.pem", "key.pem", "bundle.pem"}


def test_sign_csr_returns_leaf_then_issuer(ca: CertificateAuthority) -> None:
    csr_pem, key_pem = make_csr(WEB)
    chain = load_pem_certificates(ca.sign_csr(csr_pem, proven_id=WEB, now=NOW))
    assert [spiffe_id_from_cert(chain[0])] == [WEB]
    assert chain[1] == ca.issuer_certificate
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == chain[0].public_key()


def _csr_with(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, names: list[x509.GeneralName]
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize(
    ("csr_pem", "proven", "reason"),
    [
        pytest.param(
            make_csr(DB)[0], WEB, "asks for .*db but the credential proves", id="wrong-id"
        ),
        pytest.param(
            make_csr(SpiffeId.parse("spiffe://evil.td/ns/default/sa/web"))[0],
            WEB,
            "asks for",
            id="other-td-csr",
        ),
        pytest.param(
            make_csr(SpiffeId.parse("spiffe://evil.td/x"))[0],
            SpiffeId.parse("spiffe://evil.td/x"),
            "not in this CA's trust domain",
            id="other-td-proven",
        ),
        pytest.param(_csr_with(KEY, []), WEB, "no subjectAltName", id="no-san"),
        pytest.param(
            _csr_with(KEY, [x509.UniformResourceIdentifier(str(WEB)), x509.DNSName("web")]),
            WEB,
            "exactly one URI SAN",
            id="extra-dns-san",
        ),
        pytest.param(
            _csr_with(
                KEY,
                [x509.UniformResourceIdentifier(str(WEB)), x509.UniformResourceIdentifier(str(DB))],
            ),
            WEB,
            "exactly one URI SAN",
            id="two-uris",
        ),
        pytest.param(
            _csr_with(KEY, [x509.UniformResourceIdentifier("spiffe://cluster.local/a/../b")]),
            WEB,
            "relative segment",
            id="invalid-spiffe-id",
        ),
        pytest.param(b"hello", WEB, "no PEM", id="not-pem"),
        pytest.param(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            WEB,
            "malformed",
            id="malformed-pem",
        ),
        pytest.param(
            _csr_with(
                ec.generate_private_key(ec.SECP521R1()), [x509.UniformResourceIdentifier(str(WEB))]
            ),
            WEB,
            "curve",
            id="p521-key",
        ),
        pytest.param(
            make_csr(SpiffeId.parse("spiffe://cluster.local"))[0],
            SpiffeId.parse("spiffe://cluster.local"),
            "no path",
            id="root-id",
        ),
    ],
)
def test_sign_csr_refusals(
    ca: CertificateAuthority, csr_pem: bytes, proven: SpiffeId, reason: str
) -> None:
    with pytest.raises(IdentityError, match=reason):
        ca.sign_csr(csr_pem, proven_id=proven, now=NOW)


def test_sign_csr_refuses_a_tampered_signature(ca: CertificateAuthority) -> None:
    csr = x509.load_pem_x509_csr(make_csr(WEB)[0])
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature value
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(IdentityError, match="signature is not valid"):
        ca.sign_csr(tampered, proven_id=WEB, now=NOW)


def test_rotate_root_keeps_old_svids_valid(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path, TD, now=NOW)
    old = ca.issue(WEB, now=NOW)
    rotated = ca.rotate_root(now=NOW + 100)
    new = rotated.issue(WEB, now=NOW + 100)
    roots = load_pem_certificates(rotated.bundle_pem())
    assert len(roots) == 2
    for issued in (old, new):
        verify_chain(load_pem_certificates(issued.cert_chain_pem), roots, now=NOW + 200)
    assert (
        verify_chain(load_pem_certificates(new.cert_chain_pem), roots, now=NOW + 200).root
        == roots[1]
    )
    reloaded = CertificateAuthority.load(tmp_path)
    assert reloaded.bundle_pem() == rotated.bundle_pem()
    assert reloaded.issuer_certificate == rotated.issuer_certificate
    retired = reloaded.retire_roots()
    assert len(retired.roots) == 1
    with pytest.raises(IdentityError, match="does not chain"):
        verify_chain(load_pem_certificates(old.cert_chain_pem), retired.roots, now=NOW + 200)


def test_sign_csr_accepts_rsa_2048_and_refuses_small_rsa_and_ed25519(
    ca: CertificateAuthority,
) -> None:
    uri: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(WEB))]
    big = rsa.generate_private_key(65537, 2048)
    issued = ca.sign_csr_svid(_csr_with(big, uri), proven_id=WEB, now=NOW)
    assert load_pem_certificates(issued.cert_chain_pem)[0].public_key() == big.public_key()
    assert issued.key_pem == b""
    assert issued.not_after - NOW == pytest.approx(86400.0)
    with pytest.raises(IdentityError, match="key is with the workload"):
        issued.to_credential()
    small = rsa.generate_private_key(65537, 1024)
    with pytest.raises(IdentityError, match="too small"):
        ca.sign_csr(_csr_with(small, uri), proven_id=WEB, now=NOW)
    edwards = ed25519.Ed25519PrivateKey.generate()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(uri), critical=False)
        .sign(edwards, None)
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(IdentityError, match="not accepted"):
        ca.sign_csr(csr, proven_id=WEB, now=NOW)


def test_ttl_below_a_minute_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(IdentityError, match="at least 60"):
        ca.issue(WEB, now=NOW, ttl_s=30)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        pytest.param(lambda d: (d / "ca.json").write_text("{"), "unreadable", id="bad-json"),
        pytest.param(
            lambda d: (d / "ca.json").write_text('{"format": 9}'), "unknown CA format", id="format"
        ),
        pytest.param(lambda d: (d / "issuer-cert.pem").unlink(), "missing", id="no-issuer"),
        pytest.param(
            lambda d: (d / "issuer-key.pem").write_bytes((d / "root-key.pem").read_bytes()),
            "does not match",
            id="swapped-key",
        ),
        pytest.param(
            lambda d: (d / "bundle.pem").write_bytes((d / "issuer-cert.pem").read_bytes()),
            "does not contain the current root",
            id="bundle-without-root",
        ),
    ],
)
def test_load_refuses_a_damaged_ca(tmp_path: Path, damage: object, reason: str) -> None:
    CertificateAuthority.init(tmp_path, TD, now=NOW)
    assert callable(damage)
    damage(tmp_path)
    with pytest.raises(IdentityError, match=reason):
        CertificateAuthority.load(tmp_path)
