"""Join tokens: bound to one ID, short-lived, single-use, refused across trust domains."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from meshlet.errors import IdentityError
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.identity.tokens import JOIN_AUDIENCE, TokenLedger
from meshlet.identity.x509 import load_pem_certificates, make_csr

NOW = 1_700_000_000.0
TD = "cluster.local"
WEB = SpiffeId.for_workload(TD, "default", "web")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("ca"), TD, now=NOW)


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("other"), "other.td", now=NOW)


def test_token_proves_its_id_and_lets_the_workload_get_an_svid(
    ca: CertificateAuthority,
) -> None:
    token = ca.issue_join_token(WEB, now=NOW)
    claims = ca.verify_join_token(token, now=NOW + 5, ledger=TokenLedger())
    assert claims.spiffe_id == WEB
    assert claims.expires_at - claims.issued_at == 600
    csr, _key = make_csr(WEB)
    chain = ca.sign_csr(csr, proven_id=claims.spiffe_id, now=NOW + 5)
    assert len(load_pem_certificates(chain)) == 2


def test_token_is_an_es256_jwt_with_a_key_id(ca: CertificateAuthority) -> None:
    token = ca.issue_join_token(WEB, now=NOW)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256"
    assert header["kid"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == JOIN_AUDIENCE
    assert claims["sub"] == str(WEB)


def test_replayed_token_is_refused(ca: CertificateAuthority) -> None:
    ledger = TokenLedger()
    token = ca.issue_join_token(WEB, now=NOW)
    ca.verify_join_token(token, now=NOW + 1, ledger=ledger)
    with pytest.raises(IdentityError, match="already used"):
        ca.verify_join_token(token, now=NOW + 2, ledger=ledger)


def test_expired_token_is_refused(ca: CertificateAuthority) -> None:
    token = ca.issue_join_token(WEB, now=NOW, ttl_s=60)
    with pytest.raises(IdentityError, match="expired"):
        ca.verify_join_token(token, now=NOW + 60, ledger=TokenLedger())


def test_token_from_another_trust_domain_is_refused(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    foreign = other_ca.issue_join_token(SpiffeId.parse("spiffe://other.td/x"), now=NOW)
    with pytest.raises(IdentityError, match="not this trust domain"):
        ca.verify_join_token(foreign, now=NOW, ledger=TokenLedger())


def test_token_for_another_trust_domain_is_not_issued(ca: CertificateAuthority) -> None:
    with pytest.raises(IdentityError, match="not in trust domain"):
        ca.issue_join_token(SpiffeId.parse("spiffe://other.td/x"), now=NOW)


def test_token_signed_by_a_stranger_is_refused(ca: CertificateAuthority) -> None:
    forged = jwt.encode(
        {
            "iss": f"spiffe://{TD}",
            "sub": str(WEB),
            "aud": JOIN_AUDIENCE,
            "iat": int(NOW),
            "exp": int(NOW + 600),
            "jti": "x",
        },
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
    )
    with pytest.raises(IdentityError, match="signature"):
        ca.verify_join_token(forged, now=NOW, ledger=TokenLedger())


def test_token_after_root_rotation_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path, TD, now=NOW)
    token = ca.issue_join_token(WEB, now=NOW)
    with pytest.raises(IdentityError, match="signature"):
        ca.rotate_root(now=NOW).verify_join_token(token, now=NOW, ledger=TokenLedger())


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        pytest.param("", "malformed", id="empty"),
        pytest.param("not.a.jwt", "malformed", id="garbage"),
        pytest.param(
            jwt.encode({"iss": f"spiffe://{TD}"}, "k" * 32, algorithm="HS256"),
            "not acceptable",
            id="hs256",
        ),
    ],
)
def test_malformed_tokens_are_refused(ca: CertificateAuthority, token: str, reason: str) -> None:
    with pytest.raises(IdentityError, match=reason):
        ca.verify_join_token(token, now=NOW, ledger=TokenLedger())


def test_ttl_bounds(ca: CertificateAuthority) -> None:
    with pytest.raises(IdentityError, match="ttl"):
        ca.issue_join_token(WEB, now=NOW, ttl_s=0)
    with pytest.raises(IdentityError, match="ttl"):
        ca.issue_join_token(WEB, now=NOW, ttl_s=30 * 86400)


def test_ledger_forgets_tokens_once_they_expire() -> None:
    ledger = TokenLedger()
    ledger.consume("a", expires_at=NOW + 10, now=NOW)
    ledger.consume("b", expires_at=NOW + 100, now=NOW)
    assert len(ledger) == 2
    with pytest.raises(IdentityError):
        ledger.consume("a", expires_at=NOW + 10, now=NOW + 9)
    ledger.consume("c", expires_at=NOW + 200, now=NOW + 10)
    assert "a" not in ledger
    assert "b" in ledger
    assert len(ledger) == 2
