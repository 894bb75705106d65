"""``ControlServer``: the control plane's HTTPS API on one port.

Endpoints (JSON bodies; docs/control.md has the exact shapes):

- ``POST /v1/identity`` — a CSR plus a join token (first start) or plus the
  current SVID as the TLS client certificate (renewal) -> the signed chain and
  the trust bundle. The CSR must ask for exactly the identity the credential
  proves (``CertificateAuthority.sign_csr_svid`` enforces it).
- ``GET /v1/watch?proxy=ID&workload=NAME&version=V&applied=A&address=HOST:PORT`` — a long
  poll over mTLS: answered at once with the workload's snapshot when its version
  differs from ``V`` (the last version it received), otherwise held until it
  changes or ``hold_s`` passes (204). Each watch registers the proxy, refreshes
  its lease, and records ``A`` (the version it runs) as acknowledged.
- ``POST /v1/ack`` — ``{"proxy", "version", "ok", "reason"}``: ACK or NACK.
- ``POST /v1/leave?proxy=ID`` — a sidecar going away withdraws its endpoint.
- ``GET /v1/status`` — config digest, last refused change, and every proxy's
  sent/acked versions and last NACK.

Security events (SVIDs issued, renewed or refused, join tokens spent or
refused, config changes accepted or refused, a caller acting as another
workload) also go to the control plane's own hash-chained audit log
(``control/auditing.py``).

A long poll (not a stream) is the simplest thing that pushes fast: a change
sets one asyncio.Event that every held watch waits on, so all of them answer in
the same loop iteration, and each proxy's next poll is its resubscription.

After a restart the registry is empty; proxies come back one by one. A watch
that already runs a snapshot is therefore not answered during the first
``resync_grace_s`` seconds unless nothing changed, so no proxy is told "this
service has fewer endpoints" merely because its peers have not reconnected yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from meshlet.clock import Clock, MonotonicClock
from meshlet.control import api
from meshlet.control.auditing import ControlAudit, files_digest
from meshlet.control.http import ApiRequest, ApiResponse, serve_connection
from meshlet.control.ledger import load_ledger
from meshlet.control.registry import DEFAULT_LEASE_S, Registry
from meshlet.control.snapshot import Snapshot, compile_snapshot
from meshlet.control.store import ConfigStore, dir_signature, load_config_dir
from meshlet.errors import ConfigError, IdentityError
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId
from meshlet.telemetry.audit import AuditLog

__all__ = ["ControlServer"]

logger = logging.getLogger(__name__)

# A held watch is answered with 204 after this; proxies re-poll at once. Short
# enough that a dead TCP path is noticed by the proxy within it.
DEFAULT_HOLD_S = 15.0
# How often the config directory is looked at: a few stat calls, so 4 times a
# second costs nothing and keeps file-save-to-last-ACK well under the 1 s goal.
DEFAULT_POLL_S = 0.25
# After a restart, proxies with a snapshot wait this long for their peers to
# re-register before being sent a changed one. Proxies reconnect with backoff
# capped at 2 s (dynamic.py), so 5 s covers a full round.
DEFAULT_RESYNC_GRACE_S = 5.0
# The control plane's own certificate; it re-issues itself at half-life.
CONTROL_SVID_TTL_S = 24 * 3600.0


class ControlServer:
    """CA front, config store, registry and snapshot push in one asyncio server."""

    def __init__(
        self,
        *,
        config_dir: Path,
        ca: CertificateAuthority,
        clock: Clock | None = None,
        hold_s: float = DEFAULT_HOLD_S,
        poll_s: float = DEFAULT_POLL_S,
        lease_s: float = DEFAULT_LEASE_S,
        resync_grace_s: float = DEFAULT_RESYNC_GRACE_S,
        svid_ttl_s: float | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.config_dir = config_dir
        self.ca = ca
        self.clock = clock or MonotonicClock()
        self.hold_s = hold_s
        self.poll_s = poll_s
        self.resync_grace_s = resync_grace_s
        self.svid_ttl_s = svid_ttl_s
        self.audit = ControlAudit(audit)  # closed by close()
        self.registry = Registry(lease_s=lease_s)
        self.ledger_path = ca.directory / "control" / "used-tokens"
        self.ledger = load_ledger(self.ledger_path, now=self.clock.wall())
        source = load_config_dir(config_dir)  # a bad config at start is fatal
        if source.mesh.trust_domain != ca.trust_domain:
            raise ConfigError(
                f"{source.mesh.source}: trust_domain {source.mesh.trust_domain!r} is not the "
                f"CA's trust domain {ca.trust_domain!r}"
            )
        self.store = ConfigStore(source)
        self.audit.config_accepted(digest=source.digest, generation=1, files=source.files)
        self._signature = dir_signature(config_dir)
        self._wake = asyncio.Event()
        self._cache: dict[str, tuple[tuple[int, int], Snapshot]] = {}
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._conns: set[asyncio.Task[None]] = set()
        self._started_s = self.clock.monotonic()
        self._ssl: ssl.SSLContext | None = None
        self._svid_renew_at = 0.0

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, sock: socket.socket) -> None:
        """Serve on the listening socket ``sock`` (bound by the caller: port 0 in tests)."""
        self._ssl = self._server_context()
        self._started_s = self.clock.monotonic()
        self._server = await asyncio.start_server(self._on_connection, sock=sock, ssl=self._ssl)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._housekeeping())]
        logger.info(
            "control_started",
            extra={"config_digest": self.store.current.digest, "address": self.address},
        )

    @property
    def address(self) -> tuple[str, int] | None:
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self.audit.close()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:  # tracked so close() can cut held watches
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)
        try:
            await serve_connection(reader, writer, self._handle)
        except asyncio.CancelledError:
            # Only close() cancels these leaf tasks. Python 3.11's stream callback
            # calls task.exception() on them and would log a cancelled one as an
            # error, so end quietly instead of re-raising.
            return

    # -- TLS -----------------------------------------------------------------------

    def _server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        # Optional: the first identity request has only a join token to show.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cadata=self.ca.bundle_pem().decode())
        self._load_own_svid(ctx)
        return ctx

    def _load_own_svid(self, ctx: ssl.SSLContext) -> None:
        now = self.clock.wall()
        ttl = self.svid_ttl_s or CONTROL_SVID_TTL_S
        issued = self.ca.issue(SpiffeId.control_plane(self.ca.trust_domain), now=now, ttl_s=ttl)
        outdir = self.ca.directory / "control"
        issued.write(outdir)  # key 0600, like every key meshlet writes
        # load_cert_chain on a live context: new handshakes get the new certificate.
        ctx.load_cert_chain(outdir / "cert.pem", outdir / "key.pem")
        self._svid_renew_at = now + (issued.not_after - now) / 2
        logger.info("control_certificate_issued", extra={"not_after": issued.not_after})
        self.audit.control_svid(spiffe_id=str(issued.spiffe_id), not_after=issued.not_after)

    # -- background work -------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.poll_config()
                gone = self.registry.expire(now_s=self.clock.monotonic(), wall_s=self.clock.wall())
                for record in gone:
                    logger.info(
                        "proxy_expired",
                        extra={"proxy": record.proxy_id, "workload": record.workload},
                    )
                if gone:
                    self.notify()
                if self._ssl is not None and self.clock.wall() >= self._svid_renew_at:
                    self._load_own_svid(self._ssl)
            except (OSError, IdentityError) as exc:
                logger.warning("housekeeping_failed", extra={"error": str(exc)})

    async def poll_config(self) -> bool:
        """Reload the config directory if a file changed; True when a new config
        went live. A refused change is logged with every problem and the last good
        config keeps serving."""
        signature = dir_signature(self.config_dir)
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            candidate: Any = await asyncio.to_thread(load_config_dir, self.config_dir)
        except ConfigError as exc:
            candidate = exc
        if not isinstance(candidate, ConfigError) and (
            candidate.mesh.trust_domain != self.ca.trust_domain
        ):
            candidate = ConfigError(
                f"{candidate.mesh.source}: trust_domain may not change while running"
            )
        changed = self.store.offer(candidate)
        current = self.store.current
        if isinstance(candidate, ConfigError):
            logger.warning(
                "config_refused",
                extra={"problems": list(candidate.problems), "serving": current.digest},
            )
            self.audit.config_refused(
                candidate_digest=await asyncio.to_thread(files_digest, self.config_dir),
                serving_digest=current.digest,
                problems=candidate.problems,
            )
        elif changed:
            logger.info("config_applied", extra={"config_digest": current.digest})
            self.audit.config_accepted(
                digest=current.digest, generation=self.store.generation, files=current.files
            )
            for warning in self.store.current.warnings:
                logger.warning("config_warning", extra={"warning": warning})
            self.notify()
        return changed

    def notify(self) -> None:
        """Wake every held watch: something they may care about changed."""
        woken, self._wake = self._wake, asyncio.Event()
        woken.set()

    # -- snapshots -----------------------------------------------------------------------

    def snapshot_for(self, workload: str) -> Snapshot | None:
        key = (self.store.generation, self.registry.generation)
        cached = self._cache.get(workload)
        if cached is not None and cached[0] == key:
            return cached[1]
        snap = compile_snapshot(self.store.current, self.registry, workload)
        if snap is not None:
            self._cache[workload] = (key, snap)
        return snap

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/status`` returns (no keys, no tokens)."""
        return api.status(self)

    # -- request handling ------------------------------------------------------------------

    async def _handle(self, request: ApiRequest) -> ApiResponse:
        route = (request.method, request.path)
        try:
            if route == ("POST", "/v1/identity"):
                return api.identity(self, request)
            if route == ("GET", "/v1/watch"):
                return await self._watch(request)
            if route == ("POST", "/v1/ack"):
                return api.ack(self, request)
            if route == ("POST", "/v1/leave"):
                return api.leave(self, request)
            if route == ("GET", "/v1/status"):
                return ApiResponse.of(200, self.status())
        except ValueError as exc:  # bad JSON or a missing field: the client's mistake
            return ApiResponse.error(400, str(exc))
        return ApiResponse.error(404, f"no such endpoint: {request.method} {request.path}")

    async def _watch(self, request: ApiRequest) -> ApiResponse:
        q = request.query
        proxy_id, workload = q.get("proxy", ""), q.get("workload", "")
        if not proxy_id or not workload:
            raise ValueError("'proxy' and 'workload' query parameters are required")
        refused = api.authorize(self, request, workload)
        if refused is not None:
            return refused
        assert request.peer is not None, "BUG: authorized without a peer"
        if self.registry.heartbeat(
            proxy_id=proxy_id,
            workload=workload,
            spiffe_id=request.peer.spiffe_id,
            address=q.get("address") or None,
            cert_not_after=request.peer.not_after,
            now_s=self.clock.monotonic(),
        ):
            logger.info("proxy_registered", extra={"proxy": proxy_id, "workload": workload})
            self.notify()
        applied = q.get("applied")
        if applied:  # what it runs now; after our restart this is how status learns it
            record = self.registry.get(proxy_id)
            if record is not None and record.acked != applied:
                self.registry.ack(proxy_id, applied)
        known = q.get("version", "")
        deadline = self.clock.monotonic() + self.hold_s
        while True:
            snap = self.snapshot_for(workload)
            if snap is None:  # the workload was removed from mesh.yaml meanwhile
                return ApiResponse.error(404, f"mesh.yaml has no workload {workload!r}")
            now = self.clock.monotonic()
            warm_until = self._started_s + self.resync_grace_s
            differs = snap.version != known
            if differs and (not known or now >= warm_until):
                self.registry.sent(proxy_id, snap.version)
                return ApiResponse(
                    status=200,
                    body=snap.to_json(),
                    headers=((b"content-type", b"application/json"),),
                )
            if now >= deadline:
                return ApiResponse(status=204)
            wait_until = min(deadline, warm_until) if differs else deadline
            event = self._wake
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), max(wait_until - now, 0.0))
