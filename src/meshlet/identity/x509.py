"""X.509 helpers shared by the CA, the proxy and the CLI: read PEM, read SPIFFE IDs
from certificates, build CSRs, and check a chain against a trust bundle.

Everything that can fail on outside input raises ``IdentityError`` with a
message a user can act on; cryptography's exceptions never leak (STYLE.md §5).
The chain check here is for tooling (``meshlet ca inspect``, tests, the control
plane checking a renewal credential); the data plane verifies with ``ssl``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from meshlet.errors import IdentityError
from meshlet.identity.spiffeid import SpiffeId

__all__ = [
    "PrivateKey",
    "VerifiedChain",
    "generate_key",
    "key_to_pem",
    "load_pem_certificates",
    "load_pem_private_key",
    "make_csr",
    "spiffe_id_from_cert",
    "spiffe_id_from_cert_der",
    "to_datetime",
    "to_timestamp",
    "verify_chain",
]

PrivateKey = ec.EllipticCurvePrivateKey


def to_datetime(ts: float) -> dt.datetime:
    """Seconds since the epoch as an aware UTC datetime, the unit X.509 speaks."""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC)


def to_timestamp(when: dt.datetime) -> float:
    return when.timestamp()


def generate_key() -> PrivateKey:
    """A fresh ECDSA P-256 key (ARCHITECTURE.md: the mesh's one key type)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: what ``ssl`` and the ``spiffe`` library both read."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_pem_certificates(data: bytes, *, what: str = "certificate") -> list[x509.Certificate]:
    """All certificates in a PEM blob, in order; at least one, else ``IdentityError``."""
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise IdentityError(f"{what}: no PEM 'BEGIN CERTIFICATE' block found")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise IdentityError(f"{what}: malformed PEM certificate ({exc})") from exc
    return certs


def load_pem_private_key(data: bytes, *, what: str = "private key") -> PrivateKey:
    """An unencrypted EC private key from PEM, else ``IdentityError``."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{what}: malformed or encrypted PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{what}: expected an ECDSA key, got {type(key).__name__}")
    return key


def spiffe_id_from_cert(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of an X.509-SVID: its one and only URI SAN (X509-SVID.md §2)."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
    except x509.ExtensionNotFound:
        raise IdentityError("certificate has no subjectAltName, so no SPIFFE ID") from None
    assert isinstance(san.value, x509.SubjectAlternativeName), "BUG: SAN extension type"
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise IdentityError(
            f"certificate must have exactly one URI SAN (the SPIFFE ID), found {len(uris)}"
        )
    return SpiffeId.parse(uris[0])


def spiffe_id_from_cert_der(der: bytes) -> SpiffeId:
    """The peer's SPIFFE ID from ``ssl``'s ``getpeercert(binary_form=True)``."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise IdentityError(f"peer certificate is not valid DER ({exc})") from exc
    return spiffe_id_from_cert(cert)


def make_csr(spiffe_id: SpiffeId, key: PrivateKey | None = None) -> tuple[bytes, bytes]:
    """A CSR asking for ``spiffe_id``, and the PEM of the key it was made with.

    The key is generated here, where it will be used, and never leaves the caller
    (ARCHITECTURE.md, Identity). Returns ``(csr_pem, key_pem)``.
    """
    key = key or generate_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM), key_to_pem(key)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedChain:
    """What ``verify_chain`` proved: the leaf's identity and the root it chains to."""

    spiffe_id: SpiffeId
    leaf: x509.Certificate
    root: x509.Certificate


def verify_chain(
    chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], *, now: float
) -> VerifiedChain:
    """Check that ``chain`` (leaf first) is an X.509-SVID chaining to one of ``roots``.

    Each link's signature, validity window at ``now`` and CA flag are checked
    (RFC 5280 §6.1, reduced to what an SVID chain uses); the leaf must be a
    non-CA certificate with one SPIFFE URI SAN in the roots' trust domain is the
    caller's check, since a bundle may be shared across trust domains.
    """
    if not chain:
        raise IdentityError("certificate chain is empty")
    leaf = chain[0]
    spiffe_id = spiffe_id_from_cert(leaf)
    when = to_datetime(now)
    if _is_ca(leaf):
        raise IdentityError("leaf certificate is a CA certificate; an SVID must not be")
    current = leaf
    for depth, candidate in enumerate([*chain[1:], None]):
        _check_window(current, when, depth)
        root = _find_root(current, roots)
        if root is not None:
            _check_window(root, when, depth + 1)
            return VerifiedChain(spiffe_id=spiffe_id, leaf=leaf, root=root)
        if candidate is None:
            break
        if not _is_ca(candidate):
            raise IdentityError(f"chain certificate {depth + 1} is not a CA")
        if not _signed_by(current, candidate):
            raise IdentityError(
                f"chain certificate {depth} is not signed by certificate {depth + 1}"
            )
        current = candidate
    raise IdentityError("certificate does not chain to any root in the trust bundle")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        return False
    return isinstance(bc, x509.BasicConstraints) and bc.ca


def _check_window(cert: x509.Certificate, when: dt.datetime, depth: int) -> None:
    if when < cert.not_valid_before_utc:
        raise IdentityError(
            f"chain certificate {depth} is not valid until {_iso(cert.not_valid_before_utc)}"
        )
    if when > cert.not_valid_after_utc:
        raise IdentityError(
            f"chain certificate {depth} expired at {_iso(cert.not_valid_after_utc)}"
        )


def _find_root(
    cert: x509.Certificate, roots: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    for root in roots:
        if cert == root:
            return root
        if root.subject == cert.issuer and _signed_by(cert, root):
            return root
    return None


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
