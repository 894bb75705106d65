"""TLS contexts for sidecar-to-sidecar mTLS, and reading the peer's SPIFFE ID.

Both directions use TLS 1.3 only with a client certificate required: the mesh
controls both ends, so there is no reason to negotiate anything older (and 1.3
is one round trip). Chains are verified against the trust bundle by OpenSSL;
hostname checking is off because a workload's identity is its SPIFFE URI SAN,
not a DNS name, and that SAN is compared with the expected identity after the
handshake (``peer_spiffe_id``).
"""

from __future__ import annotations

import _ssl
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshlet.config.bootstrap import IdentityFiles
from meshlet.errors import IdentityError
from meshlet.identity.spiffeid import SpiffeId

__all__ = [
    "LoadedIdentity",
    "cert_time_seconds",
    "handshake_failure_reason",
    "load_identity",
    "peer_spiffe_id",
]

_ALPN = ["http/1.1"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedIdentity:
    """One generation of certificate, key and bundle, ready to hand to new
    handshakes. Swapped as a whole on reload so a handshake never mixes two."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    spiffe_id: str
    not_after: float  # UNIX seconds
    not_before: float
    serial: str  # hex
    cert_path: Path
    bundle_roots: int


def _context(side: int, files: IdentityFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    if side == ssl.PROTOCOL_TLS_CLIENT:
        # Identity is the URI SAN, checked against the endpoint after the handshake.
        ctx.check_hostname = False
    else:
        # One TLS 1.3 session ticket, not OpenSSL's two (RFC 8446 §4.6.1): the
        # sidecar's pool never resumes a session, so tickets are work nobody
        # uses (server CPU per mTLS handshake in memory, OpenSSL 3.0: 0.92 ms
        # with two, 0.80 with one, 0.61 with none). Not none: the ticket is the
        # server's first bytes after the client's Finished and carries the ACK
        # for it; without it a client that leaves Nagle on (TCP_NODELAY unset)
        # holds its first request until the server's delayed ACK, 40 ms later
        # (measured: first response p50 2.6 -> 44 ms in bench_proxy.py).
        ctx.num_tickets = 1
    ctx.load_cert_chain(str(files.cert), str(files.key))
    ctx.load_verify_locations(cafile=str(files.bundle))
    ctx.set_alpn_protocols(_ALPN)
    return ctx


def load_identity(files: IdentityFiles) -> LoadedIdentity:
    """Read cert/key/bundle and build both contexts; raise IdentityError naming the
    file and the reason on any problem (missing, unreadable, key mismatch, no
    SPIFFE ID), so a bad rotation never replaces a good identity."""
    for path in (files.cert, files.key, files.bundle):
        if not path.is_file():  # ssl's FileNotFoundError does not say which file
            raise IdentityError(f"{path}: no such file")
    try:
        server = _context(ssl.PROTOCOL_TLS_SERVER, files)
        client = _context(ssl.PROTOCOL_TLS_CLIENT, files)
        leaf = _decode_leaf(files.cert)
        roots = files.bundle.read_bytes().count(b"-----BEGIN CERTIFICATE-----")
    except FileNotFoundError as exc:
        raise IdentityError(f"{exc.filename}: no such file") from exc
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise IdentityError(f"cannot load identity from {files.cert}: {exc}") from exc
    sans: Any = leaf.get("subjectAltName", ())
    uris = [pair[1] for pair in sans if pair[0] == "URI"]
    if len(uris) != 1:
        raise IdentityError(f"{files.cert}: an SVID has exactly one URI SAN, found {len(uris)}")
    spiffe_id = str(SpiffeId.parse(uris[0]))
    return LoadedIdentity(
        server=server,
        client=client,
        spiffe_id=spiffe_id,
        not_after=cert_time_seconds(leaf["notAfter"]),
        not_before=cert_time_seconds(leaf["notBefore"]),
        serial=format(int(leaf["serialNumber"], 16), "x"),
        cert_path=files.cert,
        bundle_roots=roots,
    )


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def cert_time_seconds(text: str) -> float:
    """UNIX seconds of a certificate time as the ssl module prints it
    (OpenSSL's ``ASN1_TIME_print``: ``"Jan  5 09:34:43 2018 GMT"``, always GMT).

    ``ssl.cert_time_to_seconds`` does the same through ``time.strptime``, which
    imports ``_strptime`` and ``calendar`` (measured: 3-5 ms and 0.3-0.9 MiB at
    start-up); the format is fixed, so read it directly.
    """
    parts = text.split()
    if len(parts) != 5 or parts[4] != "GMT":
        raise ValueError(f"certificate time {text!r}: expected 'Mon DD HH:MM:SS YYYY GMT'")
    month = _MONTHS.index(parts[0]) + 1
    day, year = int(parts[1]), int(parts[3])
    hour, minute, second = (int(x) for x in parts[2].split(":"))
    # Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
    # days_from_civil): years start in March so the leap day comes last.
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return float(days * 86400 + hour * 3600 + minute * 60 + second)


def _decode_leaf(path: Path) -> dict[str, Any]:
    """The first certificate of a PEM file, decoded by the ssl module.

    ``_ssl._test_decode_cert`` is the decoder behind ``getpeercert()``; using it
    keeps ``cryptography`` (about 8 MiB of RSS and 70 ms of import) out of the
    sidecar. If a future Python drops it, fall back to cryptography.
    """
    decode = getattr(_ssl, "_test_decode_cert", None)
    if decode is not None:
        return dict(decode(str(path)))
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(path.read_bytes())
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    fmt = "%b %d %H:%M:%S %Y GMT"
    return {
        "subjectAltName": tuple(
            ("URI", u) for u in uris.get_values_for_type(x509.UniformResourceIdentifier)
        ),
        "notAfter": cert.not_valid_after_utc.strftime(fmt),
        "notBefore": cert.not_valid_before_utc.strftime(fmt),
        "serialNumber": format(cert.serial_number, "X"),
    }


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The verified peer certificate's SPIFFE ID, or None.

    Uses the ssl module's already-decoded view of the verified certificate (no
    second parse). The SPIFFE X.509-SVID spec requires exactly one URI SAN; a
    certificate with several is treated as having none.
    """
    if ssl_object is None:
        return None
    try:
        cert = ssl_object.getpeercert()
    except ValueError:  # "handshake not done yet": the peer alerted right after it (uvloop)
        return None
    if not cert:
        return None
    sans: Any = cert.get("subjectAltName", ())
    uris = [pair[1] for pair in sans if pair[0] == "URI"]
    if len(uris) != 1 or not isinstance(uris[0], str) or not uris[0].startswith("spiffe://"):
        return None
    return uris[0]


def handshake_failure_reason(exc: BaseException) -> str:
    """A short fixed word for ``meshlet_tls_handshake_failures_total{reason}``."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "bad_certificate"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reason or "CERTIFICATE_REQUIRED" in reason:
            return "no_client_cert"
        if "UNKNOWN_CA" in reason or "CERTIFICATE" in reason:
            return "bad_certificate"
        if "VERSION" in reason or "PROTOCOL" in reason or "HTTP_REQUEST" in reason:
            return "protocol"
        return "ssl_error"
    if isinstance(exc, ConnectionError | EOFError):
        return "connection_closed"
    return "other"
