"""Certificate profiles: the root, the issuer and the workload X.509-SVID.

The SVID profile is the SPIFFE X.509-SVID spec
(https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md):

- §2: exactly one URI SAN, the SPIFFE ID; the leaf's ID has a non-empty path.
- §4.1: leaf ``basicConstraints`` CA=false (critical).
- §4.3: leaf ``keyUsage`` digitalSignature (critical); never keyCertSign or
  cRLSign. keyEncipherment is only for RSA key exchange, which ECDSA keys never do.
- §4.4: ``extendedKeyUsage`` serverAuth and clientAuth, so one SVID serves both
  ends of mTLS.
- §4.1/§4.3 for signing certificates: CA=true and keyCertSign.

A leaf never outlives its issuer (RFC 5280 §6.1.3 would reject it anyway, but a
clear cap beats a chain that stops verifying at an unexpected moment).
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from meshlet.errors import IdentityError
from meshlet.identity.spiffeid import SpiffeId
from meshlet.identity.x509 import PrivateKey, generate_key, to_datetime

__all__ = ["SvidSigner", "key_id", "make_issuer", "make_root"]

ROOT_TTL_S = 10 * 365 * 86400.0  # 10 years: Istio's self-signed root default
ISSUER_TTL_S = 365 * 86400.0  # 1 year: Linkerd's issuer default; rotate within it
BACKDATE_S = 60.0  # tolerate this much clock skew between the CA and its peers
MIN_TTL_S = 60.0  # shorter than a minute cannot outlive the backdating
_SHA256 = hashes.SHA256()

_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_LEAF_EKU = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)
_LEAF_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)


def key_id(cert: x509.Certificate) -> str:
    """The hex subject key identifier, used as a JWT ``kid`` and in ``inspect``."""
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest.hex()


def _ca_cert(
    *,
    subject: x509.Name,
    issuer_name: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: PrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    path_length: int,
    authority: x509.Certificate | None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    aki_key = authority.public_key() if authority else public_key
    assert isinstance(aki_key, ec.EllipticCurvePublicKey), "BUG: CA keys are ECDSA"
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(aki_key), critical=False
    )
    return builder.sign(signing_key, _SHA256)


def _name(trust_domain: str, role: str, serial_hint: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshlet {role} {serial_hint}"),
        ]
    )


def make_root(trust_domain: str, *, now: float) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed root (path length 1: root -> issuer -> leaf)."""
    key = generate_key()
    # The key id in the name keeps successive roots distinct, which chain building needs.
    hint = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest.hex()[:16]
    name = _name(trust_domain, "root CA", hint)
    cert = _ca_cert(
        subject=name,
        issuer_name=name,
        public_key=key.public_key(),
        signing_key=key,
        not_before=to_datetime(now - BACKDATE_S),
        not_after=to_datetime(now + ROOT_TTL_S),
        path_length=1,
        authority=None,
    )
    return cert, key


def make_issuer(
    trust_domain: str, root: x509.Certificate, root_key: PrivateKey, *, now: float
) -> tuple[x509.Certificate, PrivateKey]:
    """An intermediate under ``root`` that signs workloads; capped by the root's lifetime."""
    key = generate_key()
    hint = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest.hex()[:16]
    not_after = min(to_datetime(now + ISSUER_TTL_S), root.not_valid_after_utc)
    cert = _ca_cert(
        subject=_name(trust_domain, "issuer CA", hint),
        issuer_name=root.subject,
        public_key=key.public_key(),
        signing_key=root_key,
        not_before=max(to_datetime(now - BACKDATE_S), root.not_valid_before_utc),
        not_after=not_after,
        path_length=0,
        authority=root,
    )
    return cert, key


class SvidSigner:
    """Signs workload SVIDs with one issuer; holds what is reused across signatures."""

    __slots__ = ("_aki", "_issuer", "_issuer_key", "_not_after", "_not_before")

    def __init__(self, *, issuer: x509.Certificate, issuer_key: PrivateKey) -> None:
        self._issuer = issuer
        self._issuer_key = issuer_key
        issuer_public = issuer.public_key()
        assert isinstance(issuer_public, ec.EllipticCurvePublicKey), "BUG: CA keys are ECDSA"
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public)
        self._not_before = issuer.not_valid_before_utc
        self._not_after = issuer.not_valid_after_utc

    def issue(
        self, spiffe_id: SpiffeId, *, now: float, ttl_s: float
    ) -> tuple[x509.Certificate, PrivateKey]:
        key = generate_key()
        return self._sign(spiffe_id, key.public_key(), now=now, ttl_s=ttl_s), key

    def sign_csr(
        self, csr_pem: bytes, *, proven_id: SpiffeId, now: float, ttl_s: float
    ) -> x509.Certificate:
        """Check the CSR (signature, key type, requested identity) and sign it."""
        csr = _load_csr(csr_pem)
        if not csr.is_signature_valid:
            raise IdentityError("CSR signature is not valid (the requester does not hold the key)")
        public_key = _acceptable_key(csr)
        requested = _requested_id(csr)
        if requested != proven_id:
            raise IdentityError(
                f"CSR asks for {requested} but the credential proves {proven_id}; refused"
            )
        return self._sign(proven_id, public_key, now=now, ttl_s=ttl_s)

    def _sign(
        self,
        spiffe_id: SpiffeId,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        *,
        now: float,
        ttl_s: float,
    ) -> x509.Certificate:
        if not spiffe_id.path:
            raise IdentityError(
                f"{spiffe_id} has no path; a workload SVID needs one (X509-SVID §2)"
            )
        if ttl_s < MIN_TTL_S:
            raise IdentityError(f"SVID ttl must be at least {MIN_TTL_S:g} s, got {ttl_s:g}")
        when = to_datetime(now)
        if when >= self._not_after:
            raise IdentityError(
                f"the issuer CA expired at {self._not_after:%Y-%m-%dT%H:%M:%SZ}; rotate the CA"
            )
        if when < self._not_before:
            raise IdentityError("the issuer CA is not valid yet (is the clock behind?)")
        not_before = max(to_datetime(now - BACKDATE_S), self._not_before)
        not_after = min(to_datetime(now + ttl_s), self._not_after)
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, spiffe_id.trust_domain)])
            )
            .issuer_name(self._issuer.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(_LEAF_CONSTRAINTS, critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(_LEAF_EKU, critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
                critical=False,
            )
            .add_extension(self._aki, critical=False)
            .sign(self._issuer_key, _SHA256)
        )


def _load_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in csr_pem:
        raise IdentityError("CSR: no PEM 'BEGIN CERTIFICATE REQUEST' block found")
    try:
        return x509.load_pem_x509_csr(csr_pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise IdentityError(f"CSR: malformed PEM ({exc})") from exc


def _acceptable_key(
    csr: x509.CertificateSigningRequest,
) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """ECDSA P-256/P-384 (meshlet's own keys) or RSA >= 2048 (other SPIFFE clients)."""
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            return key
        raise IdentityError(f"CSR key curve {key.curve.name} is not accepted (use P-256)")
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= 2048:
            return key
        raise IdentityError(f"CSR RSA key of {key.key_size} bits is too small (min 2048)")
    raise IdentityError(f"CSR key type {type(key).__name__} is not accepted (use ECDSA P-256)")


def _requested_id(csr: x509.CertificateSigningRequest) -> SpiffeId:
    try:
        san = csr.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        raise IdentityError("CSR has no subjectAltName; it must ask for one SPIFFE ID") from None
    except ValueError as exc:  # duplicate or undecodable extensions
        raise IdentityError(f"CSR extensions are malformed ({exc})") from exc
    assert isinstance(san, x509.SubjectAlternativeName), "BUG: SAN extension type"
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or len(san) != 1:
        raise IdentityError(
            f"CSR must ask for exactly one URI SAN and nothing else, found {len(san)} names"
        )
    return SpiffeId.parse(uris[0])
