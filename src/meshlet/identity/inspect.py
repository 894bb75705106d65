"""A human-readable summary of a certificate file, for ``meshlet ca inspect``.

Kept beside the CA rather than in the CLI so the admin server (``/certs``) and
``meshlet status`` can show the same facts the same way.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from meshlet.config.durations import format_duration
from meshlet.errors import IdentityError
from meshlet.identity.x509 import load_pem_certificates, spiffe_id_from_cert, verify_chain

__all__ = ["CertificateSummary", "summarize"]

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateSummary:
    """The facts an operator asks about a certificate chain."""

    spiffe_id: str | None  # None for a CA certificate without a URI SAN
    subject: str
    issuer: str
    serial_hex: str
    not_before: float
    not_after: float
    key: str
    is_ca: bool
    key_usage: tuple[str, ...]
    chain_length: int
    chains_to_bundle: bool | None  # None when no bundle was given
    chain_problem: str | None

    def lines(self, *, now: float) -> list[str]:
        left = self.not_after - now
        status = f"expires in {format_duration(round(left))}" if left > 0 else "EXPIRED"
        if now < self.not_before:
            status = "NOT YET VALID"
        rows = [
            ("spiffe id", self.spiffe_id or "(none)"),
            ("kind", "CA certificate" if self.is_ca else "workload SVID"),
            ("subject", self.subject or "(empty)"),
            ("issuer", self.issuer),
            ("serial", self.serial_hex),
            ("not before", _iso(self.not_before)),
            ("not after", f"{_iso(self.not_after)} ({status})"),
            ("key", self.key),
            ("key usage", ", ".join(self.key_usage) or "(none)"),
            ("chain", f"{self.chain_length} certificate(s)"),
        ]
        if self.chains_to_bundle is None:
            rows.append(("bundle", "not checked (no bundle given)"))
        elif self.chains_to_bundle:
            rows.append(("bundle", "OK: chains to a trusted root"))
        else:
            rows.append(("bundle", f"FAILED: {self.chain_problem}"))
        return [f"{name + ':':<12} {value}" for name, value in rows]


def summarize(chain_pem: bytes, *, bundle_pem: bytes | None, now: float) -> CertificateSummary:
    """Summarize the first certificate in ``chain_pem`` and check the chain at ``now``."""
    chain = load_pem_certificates(chain_pem)
    leaf = chain[0]
    is_ca = _is_ca(leaf)
    spiffe_id: str | None
    try:
        spiffe_id = str(spiffe_id_from_cert(leaf))
    except IdentityError as exc:
        if not is_ca:
            raise IdentityError(f"not an X.509-SVID: {exc}") from exc
        spiffe_id = None
    chains: bool | None = None
    problem: str | None = None
    if bundle_pem is not None:
        roots = load_pem_certificates(bundle_pem, what="bundle")
        try:
            if is_ca:
                chains = any(leaf == r for r in roots) or _ca_chains(leaf, chain[1:], roots)
                problem = None if chains else "not signed by any root in the bundle"
            else:
                verify_chain(chain, roots, now=now)
                chains = True
        except IdentityError as exc:
            chains, problem = False, str(exc)
    return CertificateSummary(
        spiffe_id=spiffe_id,
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        serial_hex=f"{leaf.serial_number:x}",
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        key=_describe_key(leaf),
        is_ca=is_ca,
        key_usage=_usages(leaf),
        chain_length=len(chain),
        chains_to_bundle=chains,
        chain_problem=problem,
    )


def _ca_chains(
    cert: x509.Certificate, rest: list[x509.Certificate], roots: list[x509.Certificate]
) -> bool:
    for candidate in [*roots, *rest]:
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):  # "not this issuer"
            continue
        if candidate in roots:
            return True
        return _ca_chains(candidate, [c for c in rest if c != candidate], roots)
    return False


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
    except x509.ExtensionNotFound:
        return False
    return isinstance(bc, x509.BasicConstraints) and bc.ca


def _describe_key(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        names = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
        return f"ECDSA {names.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    return type(key).__name__


def _usages(cert: x509.Certificate) -> tuple[str, ...]:
    found: list[str] = []
    try:
        ku = cert.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        ku = None
    if isinstance(ku, x509.KeyUsage):
        for attr, name in (
            ("digital_signature", "digitalSignature"),
            ("key_encipherment", "keyEncipherment"),
            ("key_cert_sign", "keyCertSign"),
            ("crl_sign", "cRLSign"),
        ):
            if getattr(ku, attr):
                found.append(name)
    try:
        eku = cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    except x509.ExtensionNotFound:
        eku = None
    if isinstance(eku, x509.ExtendedKeyUsage):
        found.extend(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku)
    return tuple(found)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
