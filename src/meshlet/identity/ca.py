"""The mesh's certificate authority: a root, an issuer under it, and workload SVIDs.

Layout of a CA directory (everything a ``meshlet control`` needs to restart)::

    ca.json          {"format": 1, "trust_domain": "..."}
    root-cert.pem    the current root (self-signed, 10 years)
    root-key.pem     0600
    issuer-cert.pem  the intermediate that signs workloads (1 year, capped by the root)
    issuer-key.pem   0600
    bundle.pem       every trusted root, newest last (several during a rotation)

SVIDs follow the X.509-SVID spec (see ``meshlet.identity.svid``). ``sign_csr``
is the production path (the workload keeps its key); ``issue`` generates the
key here and is for tests and ``meshlet ca issue`` on one machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshlet.errors import IdentityError
from meshlet.identity import svid
from meshlet.identity.pemfiles import KEY_MODE, PUBLIC_MODE, check_key_mode, write_atomic
from meshlet.identity.renewal import Credential
from meshlet.identity.spiffeid import SpiffeId, validate_trust_domain
from meshlet.identity.tokens import (
    DEFAULT_TOKEN_TTL_S,
    JoinClaims,
    TokenLedger,
    issue_join_token,
    verify_join_token,
)
from meshlet.identity.x509 import (
    PrivateKey,
    key_to_pem,
    load_pem_certificates,
    load_pem_private_key,
    to_timestamp,
)

__all__ = ["DEFAULT_SVID_TTL_S", "CertificateAuthority", "IssuedSvid"]

DEFAULT_SVID_TTL_S = 86400.0  # 24 h: Istio's and Linkerd's workload-certificate default
_FORMAT = 1
_META = "ca.json"
_ROOT_CERT, _ROOT_KEY = "root-cert.pem", "root-key.pem"
_ISSUER_CERT, _ISSUER_KEY = "issuer-cert.pem", "issuer-key.pem"
_BUNDLE = "bundle.pem"
_ALL_FILES = (_META, _ROOT_CERT, _ROOT_KEY, _ISSUER_CERT, _ISSUER_KEY, _BUNDLE)


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedSvid:
    """A workload credential: chain (leaf then issuer), its key, and the trust bundle."""

    spiffe_id: SpiffeId
    cert_chain_pem: bytes
    key_pem: bytes = b""  # empty when the CA signed a CSR and never saw the key
    bundle_pem: bytes
    not_before: float
    not_after: float

    def to_credential(self) -> Credential:
        """The ``renewal.Credential`` a ``CredentialStore`` holds (needs the key)."""
        if not self.key_pem:
            raise IdentityError("this SVID was signed from a CSR; its key is with the workload")
        return Credential(
            spiffe_id=self.spiffe_id,
            cert_chain_pem=self.cert_chain_pem,
            key_pem=self.key_pem,
            not_before=self.not_before,
            not_after=self.not_after,
        )

    def write(self, outdir: Path) -> None:
        """Write ``cert.pem``, ``key.pem`` (0600) and ``bundle.pem`` into ``outdir``."""
        if not self.key_pem:
            raise IdentityError("this SVID was signed from a CSR; its key is with the workload")
        outdir.mkdir(parents=True, exist_ok=True)
        write_atomic(outdir / "key.pem", self.key_pem, mode=KEY_MODE)
        write_atomic(outdir / "cert.pem", self.cert_chain_pem, mode=PUBLIC_MODE)
        write_atomic(outdir / "bundle.pem", self.bundle_pem, mode=PUBLIC_MODE)


class CertificateAuthority:
    """A loaded CA. Construct with ``init`` (new) or ``load`` (existing directory)."""

    __slots__ = (
        "_bundle_pem",
        "_directory",
        "_issuer",
        "_issuer_key",
        "_issuer_pem",
        "_root",
        "_root_key",
        "_roots",
        "_signer",
        "trust_domain",
    )

    def __init__(
        self,
        *,
        directory: Path,
        trust_domain: str,
        root: x509.Certificate,
        root_key: PrivateKey,
        issuer: x509.Certificate,
        issuer_key: PrivateKey,
        roots: list[x509.Certificate],
    ) -> None:
        self._directory = directory
        self.trust_domain = trust_domain
        self._root, self._root_key = root, root_key
        self._issuer, self._issuer_key = issuer, issuer_key
        self._roots = roots
        self._issuer_pem = issuer.public_bytes(serialization.Encoding.PEM)
        self._bundle_pem = b"".join(r.public_bytes(serialization.Encoding.PEM) for r in roots)
        self._signer = svid.SvidSigner(issuer=issuer, issuer_key=issuer_key)

    # -- construction -------------------------------------------------------------

    @classmethod
    def init(
        cls, directory: Path, trust_domain: str, *, now: float, force: bool = False
    ) -> CertificateAuthority:
        """Create a root and an issuer in ``directory``; never replace a CA unless ``force``."""
        validate_trust_domain(trust_domain)
        directory = Path(directory)
        existing = [name for name in _ALL_FILES if (directory / name).exists()]
        if existing and not force:
            raise IdentityError(
                f"{directory}: a CA already exists here ({', '.join(existing)}); "
                "refusing to overwrite it (use --force to replace it, which "
                "invalidates every certificate it issued)"
            )
        directory.mkdir(parents=True, exist_ok=True)
        root, root_key = svid.make_root(trust_domain, now=now)
        issuer, issuer_key = svid.make_issuer(trust_domain, root, root_key, now=now)
        ca = cls(
            directory=directory,
            trust_domain=trust_domain,
            root=root,
            root_key=root_key,
            issuer=issuer,
            issuer_key=issuer_key,
            roots=[root],
        )
        ca._save()
        return ca

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Load the CA in ``directory``; every problem is an ``IdentityError`` naming the file."""
        directory = Path(directory)
        meta_path = directory / _META
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IdentityError(
                f"{directory}: no CA here (run 'meshlet ca init --dir {directory}')"
            ) from None
        except (OSError, ValueError) as exc:
            raise IdentityError(f"{meta_path}: unreadable CA metadata ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise IdentityError(f"{meta_path}: unknown CA format {meta!r}")
        trust_domain = validate_trust_domain(str(meta.get("trust_domain", "")))
        root = _read_cert(directory / _ROOT_CERT)
        issuer = _read_cert(directory / _ISSUER_CERT)
        roots = load_pem_certificates(_read(directory / _BUNDLE), what=str(directory / _BUNDLE))
        root_key = _read_key(directory / _ROOT_KEY, root)
        issuer_key = _read_key(directory / _ISSUER_KEY, issuer)
        if root not in roots:
            raise IdentityError(f"{directory / _BUNDLE}: does not contain the current root")
        if issuer.issuer != root.subject:
            raise IdentityError(f"{directory / _ISSUER_CERT}: not issued by the current root")
        return cls(
            directory=directory,
            trust_domain=trust_domain,
            root=root,
            root_key=root_key,
            issuer=issuer,
            issuer_key=issuer_key,
            roots=roots,
        )

    def _save(self) -> None:
        d = self._directory
        pem = serialization.Encoding.PEM
        meta = {"format": _FORMAT, "trust_domain": self.trust_domain}
        # Bundle first: it only ever grows, so a crash mid-rotation leaves a CA whose
        # bundle still trusts whichever root and issuer are on disk.
        write_atomic(d / _BUNDLE, self._bundle_pem, mode=PUBLIC_MODE)
        write_atomic(d / _ROOT_KEY, key_to_pem(self._root_key), mode=KEY_MODE)
        write_atomic(d / _ROOT_CERT, self._root.public_bytes(pem), mode=PUBLIC_MODE)
        write_atomic(d / _ISSUER_KEY, key_to_pem(self._issuer_key), mode=KEY_MODE)
        write_atomic(d / _ISSUER_CERT, self._issuer_pem, mode=PUBLIC_MODE)
        write_atomic(d / _META, json.dumps(meta).encode() + b"\n", mode=PUBLIC_MODE)

    # -- issuing --------------------------------------------------------------------

    def issue(
        self, spiffe_id: SpiffeId, *, now: float, ttl_s: float = DEFAULT_SVID_TTL_S
    ) -> IssuedSvid:
        """Generate a key and an SVID for ``spiffe_id`` (tests, single-machine meshes)."""
        self._check_member(spiffe_id)
        leaf, key = self._signer.issue(spiffe_id, now=now, ttl_s=ttl_s)
        return self._wrap(spiffe_id, leaf, key_to_pem(key))

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        proven_id: SpiffeId,
        now: float,
        ttl_s: float = DEFAULT_SVID_TTL_S,
    ) -> bytes:
        """Sign a workload's CSR for ``proven_id``; return the chain PEM (leaf, issuer).

        ``proven_id`` is what the caller's credential (join token, current SVID)
        proves; the CSR must ask for exactly that identity and nothing else.
        """
        self._check_member(proven_id)
        leaf = self._signer.sign_csr(csr_pem, proven_id=proven_id, now=now, ttl_s=ttl_s)
        return leaf.public_bytes(serialization.Encoding.PEM) + self._issuer_pem

    def sign_csr_svid(
        self,
        csr_pem: bytes,
        *,
        proven_id: SpiffeId,
        now: float,
        ttl_s: float = DEFAULT_SVID_TTL_S,
    ) -> IssuedSvid:
        """Like ``sign_csr`` but returns the chain with its bundle and validity window."""
        self._check_member(proven_id)
        leaf = self._signer.sign_csr(csr_pem, proven_id=proven_id, now=now, ttl_s=ttl_s)
        return self._wrap(proven_id, leaf, b"")

    def _wrap(self, spiffe_id: SpiffeId, leaf: x509.Certificate, key_pem: bytes) -> IssuedSvid:
        return IssuedSvid(
            spiffe_id=spiffe_id,
            cert_chain_pem=leaf.public_bytes(serialization.Encoding.PEM) + self._issuer_pem,
            key_pem=key_pem,
            bundle_pem=self._bundle_pem,
            not_before=to_timestamp(leaf.not_valid_before_utc),
            not_after=to_timestamp(leaf.not_valid_after_utc),
        )

    def _check_member(self, spiffe_id: SpiffeId) -> None:
        if not spiffe_id.member_of(self.trust_domain):
            raise IdentityError(
                f"{spiffe_id} is not in this CA's trust domain {self.trust_domain!r}"
            )

    # -- join tokens ------------------------------------------------------------------

    def issue_join_token(
        self, spiffe_id: SpiffeId, *, now: float, ttl_s: float = DEFAULT_TOKEN_TTL_S
    ) -> str:
        """A single-use token that lets one workload get its first SVID as ``spiffe_id``."""
        return issue_join_token(
            key=self._issuer_key,
            key_id=svid.key_id(self._issuer),
            spiffe_id=spiffe_id,
            trust_domain=self.trust_domain,
            now=now,
            ttl_s=ttl_s,
        )

    def verify_join_token(self, token: str, *, now: float, ledger: TokenLedger) -> JoinClaims:
        """Verify and burn ``token``; the returned claims carry the proven SPIFFE ID."""
        return verify_join_token(
            token,
            public_key=self._issuer_key.public_key(),
            trust_domain=self.trust_domain,
            now=now,
            ledger=ledger,
        )

    # -- trust --------------------------------------------------------------------------

    def bundle_pem(self) -> bytes:
        """Every root this trust domain trusts (PEM, oldest first)."""
        return self._bundle_pem

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return tuple(self._roots)

    @property
    def issuer_certificate(self) -> x509.Certificate:
        return self._issuer

    @property
    def directory(self) -> Path:
        return self._directory

    def rotate_root(self, *, now: float) -> CertificateAuthority:
        """Add a new root beside the old one and a new issuer under it; save; return the new CA.

        Existing SVIDs keep verifying (the old root stays in the bundle) while new
        ones chain to the new root. Once every workload has renewed, drop the old
        root with ``retire_roots``.
        """
        root, root_key = svid.make_root(self.trust_domain, now=now)
        issuer, issuer_key = svid.make_issuer(self.trust_domain, root, root_key, now=now)
        rotated = CertificateAuthority(
            directory=self._directory,
            trust_domain=self.trust_domain,
            root=root,
            root_key=root_key,
            issuer=issuer,
            issuer_key=issuer_key,
            roots=[*self._roots, root],
        )
        rotated._save()
        return rotated

    def retire_roots(self) -> CertificateAuthority:
        """Keep only the current root in the bundle (after a rotation has finished)."""
        kept = CertificateAuthority(
            directory=self._directory,
            trust_domain=self.trust_domain,
            root=self._root,
            root_key=self._root_key,
            issuer=self._issuer,
            issuer_key=self._issuer_key,
            roots=[self._root],
        )
        kept._save()
        return kept


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(f"{path}: missing from the CA directory") from None
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read ({exc.strerror})") from exc


def _read_cert(path: Path) -> x509.Certificate:
    return load_pem_certificates(_read(path), what=str(path))[0]


def _read_key(path: Path, cert: x509.Certificate) -> PrivateKey:
    check_key_mode(path)
    key = load_pem_private_key(_read(path), what=str(path))
    if key.public_key() != cert.public_key():
        raise IdentityError(f"{path}: key does not match its certificate")
    return key
