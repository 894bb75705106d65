"""A test CA and SVID files, as a sidecar or a peer would read them."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from meshlet.config.bootstrap import IdentityFiles
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId

TRUST_DOMAIN = "cluster.local"


def spiffe(ns: str, sa: str) -> str:
    """``spiffe://cluster.local/ns/<ns>/sa/<sa>``."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}"


def make_ca(directory: Path, trust_domain: str = TRUST_DOMAIN) -> CertificateAuthority:
    """A fresh CA in ``directory/ca``."""
    return CertificateAuthority.init(directory / "ca", trust_domain, now=time.time())


def issue(
    ca: CertificateAuthority,
    directory: Path,
    spiffe_id: str,
    *,
    ttl_s: float = 3600.0,
    backdate_s: float = 60.0,
) -> IdentityFiles:
    """Write cert.pem/key.pem/bundle.pem for ``spiffe_id`` into ``directory``.
    Backdated a minute by default, so a peer's clock a little behind still accepts it."""
    svid = ca.issue(SpiffeId.parse(spiffe_id), now=time.time() - backdate_s, ttl_s=ttl_s)
    svid.write(directory)
    return IdentityFiles(
        cert=directory / "cert.pem", key=directory / "key.pem", bundle=directory / "bundle.pem"
    )


def client_context(files: IdentityFiles) -> ssl.SSLContext:
    """An mTLS client context like a peer sidecar's (TLS 1.3, no hostname check)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.bundle))
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


@dataclass
class Pki:
    """A CA plus the directory its SVIDs go to: ``files(id, name)`` writes one
    SVID (issued now, not backdated) into ``tmp/name``."""

    ca: CertificateAuthority
    tmp: Path

    def files(self, spiffe_id: str, name: str, *, ttl_s: float = 3600.0) -> IdentityFiles:
        svid = self.ca.issue(SpiffeId.parse(spiffe_id), now=time.time(), ttl_s=ttl_s)
        out = self.tmp / name
        svid.write(out)
        return IdentityFiles(cert=out / "cert.pem", key=out / "key.pem", bundle=out / "bundle.pem")
