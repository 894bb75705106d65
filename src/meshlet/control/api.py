"""The control plane's request handlers other than the watch: identity, ACK/NACK,
leave and status. Each takes the ``ControlServer`` whose state it reads and
changes; the watch stays in server.py with the wake-up machinery it needs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from meshlet.control.http import ApiRequest, ApiResponse
from meshlet.control.ledger import record_used
from meshlet.control.snapshot import find_workload
from meshlet.errors import IdentityError
from meshlet.identity.spiffeid import SpiffeId

if TYPE_CHECKING:
    from meshlet.control.server import ControlServer

__all__ = ["ack", "authorize", "identity", "leave", "status"]

logger = logging.getLogger("meshlet.control.server")  # one logger for the whole API


def identity(server: ControlServer, request: ApiRequest) -> ApiResponse:
    body = request.json()
    csr = body.get("csr")
    if not isinstance(csr, str):
        raise ValueError("'csr' (PEM text) is required")
    token = body.get("token")
    token = token if isinstance(token, str) else None
    peer = request.peer.spiffe_id if request.peer is not None else None
    credential = "token" if token is not None else "svid" if peer else "none"
    now = server.clock.wall()
    proven: SpiffeId | None = None
    try:
        proven = _proven(server, token, peer, now=now)
        if proven is None:
            server.audit.svid_refused(reason="no credential", credential=credential, proven_id=None)
            return ApiResponse.error(401, "send a join token or present your current SVID")
        kwargs = {} if server.svid_ttl_s is None else {"ttl_s": server.svid_ttl_s}
        issued = server.ca.sign_csr_svid(csr.encode(), proven_id=proven, now=now, **kwargs)
    except IdentityError as exc:
        logger.warning("identity_refused", extra={"error": str(exc)})
        server.audit.svid_refused(
            reason=str(exc), credential=credential, proven_id=str(proven) if proven else None
        )
        return ApiResponse.error(403, str(exc))
    logger.info("svid_issued", extra={"spiffe_id": str(proven), "renewal": token is None})
    server.audit.svid_issued(
        spiffe_id=str(issued.spiffe_id),
        renewal=token is None,
        serial=_serial(issued.cert_chain_pem),
        not_after=issued.not_after,
        peer=peer,
    )
    return ApiResponse.of(
        200,
        {
            "spiffe_id": str(issued.spiffe_id),
            "cert_chain": issued.cert_chain_pem.decode(),
            "bundle": issued.bundle_pem.decode(),
            "not_after": issued.not_after,
        },
    )


def _proven(
    server: ControlServer, token: str | None, peer: str | None, *, now: float
) -> SpiffeId | None:
    """The identity the caller's credential proves: a join token (verified,
    burned and recorded) or else its current SVID; None without either.
    IdentityError when the token is refused."""
    if token is None:
        return SpiffeId.parse(peer) if peer is not None else None
    try:
        claims = server.ca.verify_join_token(token, now=now, ledger=server.ledger)
    except IdentityError as exc:
        server.audit.token_refused(reason=str(exc))
        raise
    record_used(server.ledger_path, claims.token_id, claims.expires_at)
    server.audit.token_burned(
        token_id=claims.token_id, spiffe_id=str(claims.spiffe_id), expires_at=claims.expires_at
    )
    return claims.spiffe_id


def _serial(chain_pem: bytes) -> str:
    """The leaf's serial number in hex, as ``openssl x509 -serial`` prints it."""
    from cryptography import x509

    return format(x509.load_pem_x509_certificate(chain_pem).serial_number, "X")


def authorize(server: ControlServer, request: ApiRequest, workload: str) -> ApiResponse | None:
    """The caller must present the SVID of the workload it claims to be."""
    if request.peer is None:
        return ApiResponse.error(401, "present your SVID as the TLS client certificate")
    w = find_workload(server.store.current, workload)
    if w is None:
        return ApiResponse.error(404, f"mesh.yaml has no workload {workload!r}")
    expected = w.spiffe_id(server.store.current.mesh.trust_domain)
    if request.peer.spiffe_id != expected:
        reason = f"{request.peer.spiffe_id} may not act as workload {workload!r} ({expected})"
        server.audit.access_refused(
            peer=request.peer.spiffe_id, workload=workload, path=request.path, reason=reason
        )
        return ApiResponse.error(403, reason)
    return None


def ack(server: ControlServer, request: ApiRequest) -> ApiResponse:
    body = request.json()
    proxy_id, version = body.get("proxy"), body.get("version")
    if not isinstance(proxy_id, str) or not isinstance(version, str):
        raise ValueError("'proxy' and 'version' are required strings")
    record = server.registry.get(proxy_id)
    if record is None:
        return ApiResponse.error(404, f"unknown proxy {proxy_id!r}: watch first")
    refused = authorize(server, request, record.workload)
    if refused is not None:
        return refused
    if body.get("ok") is True:
        server.registry.ack(proxy_id, version)
        logger.info("snapshot_acked", extra={"proxy": proxy_id, "snapshot_version": version})
    else:
        reason = str(body.get("reason") or "no reason given")
        server.registry.nack(proxy_id, version, reason)
        logger.warning(
            "snapshot_nacked",
            extra={"proxy": proxy_id, "snapshot_version": version, "reason": reason},
        )
    return ApiResponse.of(200, {"ok": True})


def leave(server: ControlServer, request: ApiRequest) -> ApiResponse:
    proxy_id = request.query.get("proxy", "")
    record = server.registry.get(proxy_id)
    if record is None:
        return ApiResponse.of(200, {"ok": True})
    refused = authorize(server, request, record.workload)
    if refused is not None:
        return refused
    server.registry.leave(proxy_id)
    logger.info("proxy_left", extra={"proxy": proxy_id, "workload": record.workload})
    server.notify()
    return ApiResponse.of(200, {"ok": True})


def status(server: ControlServer) -> dict[str, Any]:
    """What ``GET /v1/status`` returns: no keys, no tokens."""
    now = server.clock.monotonic()
    proxies = []
    for p in server.registry.proxies():
        snap = server.snapshot_for(p.workload)
        proxies.append(
            {
                "proxy": p.proxy_id,
                "workload": p.workload,
                "spiffe_id": p.spiffe_id,
                "address": p.address,
                "sent": p.sent,
                "acked": p.acked,
                "current": snap.version if snap else None,
                "in_sync": snap is not None and p.acked == snap.version,
                "nack": None
                if p.nack is None
                else {"version": p.nack.version, "reason": p.nack.reason},
                "last_seen_s": round(now - p.last_seen_s, 3),
                "cert_not_after": p.cert_not_after,
            }
        )
    current = server.store.current
    return {
        "trust_domain": current.mesh.trust_domain,
        "config": {
            "digest": current.digest,
            "generation": server.store.generation,
            "files": [str(f) for f in current.files],
            "refused": list(server.store.refused),
            "warnings": list(current.warnings),
        },
        "proxies": proxies,
    }
