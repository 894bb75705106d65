"""The one set of certificates every topology of a run uses.

Issued by ``meshlet.identity.ca.CertificateAuthority`` — the mesh's own CA — so
meshlet, Envoy and HAProxy all verify the same root → issuer → SVID chains with
URI-SAN-only leaves, and no topology gets an easier (e.g. RSA-2048 vs P-256, or
shorter-chain) handshake than another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRUST_DOMAIN = "bench.local"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/server"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/client"


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """One workload's files: chain (leaf + issuer), key, and cert+key in one file."""

    spiffe_id: str
    cert: Path
    key: Path
    combined: Path  # HAProxy's ``crt`` wants the chain and the key in one PEM


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchCerts:
    bundle: Path
    server: Identity
    client: Identity
    ca_dir: Path


def issue_bench_certs(workdir: Path, *, now: float) -> BenchCerts:
    """Create a fresh CA under ``workdir`` and issue the server and client SVIDs."""
    from meshlet.identity.ca import CertificateAuthority
    from meshlet.identity.spiffeid import SpiffeId

    ca_dir = workdir / "ca"
    ca = CertificateAuthority.init(ca_dir, TRUST_DOMAIN, now=now, force=True)
    identities = []
    for name, spiffe_id in (("server", SERVER_ID), ("client", CLIENT_ID)):
        svid = ca.issue(SpiffeId.parse(spiffe_id), now=now)
        outdir = workdir / name
        svid.write(outdir)
        combined = outdir / "combined.pem"
        combined.write_bytes(svid.cert_chain_pem + svid.key_pem)
        combined.chmod(0o600)
        identities.append(
            Identity(
                spiffe_id=spiffe_id,
                cert=outdir / "cert.pem",
                key=outdir / "key.pem",
                combined=combined,
            )
        )
    return BenchCerts(
        bundle=workdir / "server" / "bundle.pem",
        server=identities[0],
        client=identities[1],
        ca_dir=ca_dir,
    )
