"""Dynamic mode: ``meshlet proxy --control URL --token TOKEN --workload NAME``.

The sidecar gets everything from the control plane instead of a bootstrap file:

1. Identity: its own key, a join token for the first SVID, renewal with the
   current one (``dynamic_identity``).
2. Config. A long-poll watch returns versioned snapshots. Each is merged with
   the local settings (listen addresses, identity files) into a bootstrap
   document and checked by the same validator as ``--config``; it then goes
   live with ``ProxyServer.apply_config`` and is ACKed, or NACKed with the
   reason while the last good one keeps serving. Opaque TCP services get
   listeners of their own, opened and closed as snapshots change
   (``dynamic_tcp``); policy decisions go to one audit chain (``dynamic_audit``).
3. Outages. When the control plane goes away the data plane keeps serving
   with its last snapshot and certificate; the watch reconnects with capped
   exponential backoff and resends the version it has, so nothing is re-applied
   when the control plane comes back with the same config.

The control plane is authenticated by the trust bundle (``--bundle``, or the
one already in the state directory) and must present
``spiffe://<trust-domain>/ns/meshlet-system/sa/control``
(``SpiffeId.control_plane``). The HTTPS client is ``control_client``; the
snapshot merge is ``dynamic_config``; this module is the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from meshlet.clock import Clock, MonotonicClock
from meshlet.config.bootstrap import BootstrapConfig, IdentityFiles, ServiceConfig
from meshlet.errors import IdentityError, MeshError, ProtocolError
from meshlet.identity.renewal import Credential, Renewer
from meshlet.identity.spiffeid import SpiffeId
from meshlet.proxy.control_client import WATCH_TIMEOUT_S, ControlClient, backoff_s, error_text
from meshlet.proxy.dynamic_audit import open_audit
from meshlet.proxy.dynamic_config import DynamicSettings, snapshot_config, split_tcp
from meshlet.proxy.dynamic_identity import SidecarIdentity

if TYPE_CHECKING:
    from meshlet.proxy.dynamic_tcp import TcpServices
    from meshlet.telemetry.audit import AuditLog

__all__ = ["DynamicProxy", "run_dynamic"]

logger = logging.getLogger(__name__)


class DynamicProxy(SidecarIdentity):
    """The sidecar's control-plane side: identity, snapshots, renewal, outages."""

    def __init__(self, settings: DynamicSettings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or MonotonicClock()
        self.proxy_id = f"{settings.workload}-{secrets.token_hex(4)}"
        self.applied: str | None = None  # version serving now
        self.seen: str | None = None  # last version received (maybe NACKed)
        self.server: Any = None  # ProxyServer once the first snapshot is live
        self.renewer = Renewer()
        self.credential: Credential | None = None
        state = settings.state_dir
        self.cert_path, self.key_path = state / "cert.pem", state / "key.pem"
        self.bundle_path = state / "bundle.pem"
        self.client: ControlClient | None = None
        self.admin: Any = None
        self.tcp: TcpServices | None = None  # opaque TCP listeners, once serving
        self.audit: AuditLog | None = None  # the one log every policy gate here writes
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    # -- snapshots --------------------------------------------------------------------

    def build_config(self, snapshot: dict[str, Any]) -> BootstrapConfig:
        """The bootstrap ``snapshot`` asks for on this machine (ConfigError: NACK)."""
        files = IdentityFiles(cert=self.cert_path, key=self.key_path, bundle=self.bundle_path)
        return snapshot_config(snapshot, self.settings, files)

    async def _apply(self, snapshot: dict[str, Any]) -> str | None:
        """Make ``snapshot`` live; return None on success, else the NACK reason.
        Whole or nothing: TCP ports are bound first, the HTTP side is swapped
        (or refuses), then the TCP side follows."""
        try:
            config, tcp_services = split_tcp(self.build_config(snapshot))
            if self.server is None:
                await self._start_server(config, tcp_services)
            else:
                assert self.tcp is not None, "BUG: a server without its TCP services"
                change = self.tcp.prepare(tcp_services)
                try:
                    self.server.apply_config(config)
                except BaseException:
                    self.tcp.abort(change)
                    raise
                await self.tcp.commit(change)
        except MeshError as exc:
            return str(exc)
        self.applied = str(snapshot["version"])
        logger.info("snapshot_applied", extra={"snapshot_version": self.applied})
        return None

    async def _start_server(
        self, config: BootstrapConfig, tcp_services: tuple[ServiceConfig, ...]
    ) -> None:
        from meshlet.proxy.dynamic_tcp import TcpServices
        from meshlet.proxy.server import ProxyServer
        from meshlet.telemetry.metrics import GoldenMetrics

        metrics = GoldenMetrics(
            workload=config.workload.name or self.settings.workload,
            namespace=config.workload.namespace or "unknown",
        )
        tcp = TcpServices(identity=self._identity, metrics=metrics, timeouts=config.timeouts)
        change = tcp.prepare(tcp_services)
        try:
            server = ProxyServer(
                config,
                metrics=metrics,
                clock=self.clock,
                audit=self.audit,  # every gate it builds writes this one chain
            )
            await server.start()
        except BaseException:
            tcp.abort(change)
            raise
        self.server, self.tcp = server, tcp
        await tcp.commit(change)
        if config.admin is not None:
            from meshlet.proxy.admin import AdminServer

            self.admin = AdminServer(self, metrics, clock=self.clock, worker=0)
            await self.admin.start(config.admin.host, config.admin.port)
        self._announce()

    def _identity(self) -> Any:
        """The SVID now serving, for TCP handshakes (read per connection)."""
        identity = self.server.identity if self.server is not None else None
        if identity is None:
            raise IdentityError("no identity loaded")
        return identity

    # -- what the admin server shows (``proxy.admin.AdminTarget``) ----------------------

    @property
    def ready(self) -> bool:
        return self.server is not None and bool(self.server.ready)

    @property
    def identity(self) -> Any:
        return self.server.identity if self.server is not None else None

    def config_dump(self) -> dict[str, Any]:
        """The server's dump with the TCP services (kept beside it) added."""
        dump: dict[str, Any] = self.server.config_dump()
        if self.tcp is not None and "outbound" in dump:
            dump["outbound"]["services"].update(self.tcp.describe())
        dump["snapshot_version"] = self.applied
        return dump

    def _announce(self) -> None:
        def fmt(addr: tuple[str, int] | None) -> str | None:
            return None if addr is None else f"{addr[0]}:{addr[1]}"

        admin = self.admin
        line = {
            "event": "ready",
            "worker": 0,
            "pid": os.getpid(),
            "proxy": self.proxy_id,
            "inbound": fmt(self.server.inbound_address),
            "outbound": fmt(self.server.outbound_address),
            "admin": fmt(admin.address) if admin is not None else None,
            "spiffe_id": str(self.credential.spiffe_id) if self.credential else None,
            "tcp": self.tcp.addresses() if self.tcp is not None else {},
        }
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def _advertised(self) -> str | None:
        address = self.server.inbound_address if self.server is not None else None
        if address is None:
            return None
        host = self.settings.advertise or address[0]
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"

    async def watch_once(self) -> None:
        """One long poll; apply and ACK/NACK whatever it brings."""
        assert self.client is not None, "BUG: no control client"
        query = {"proxy": self.proxy_id, "workload": self.settings.workload}
        if self.seen:
            query["version"] = self.seen
        if self.applied:
            query["applied"] = self.applied
        address = self._advertised()
        if address:
            query["address"] = address
        status, body = await self.client.call(
            "GET", f"/v1/watch?{urlencode(query)}", timeout_s=WATCH_TIMEOUT_S
        )
        if status == 204:
            return
        if status != 200:
            raise IdentityError(f"watch refused ({status}): {error_text(body)}")
        snapshot = json.loads(body)
        version = str(snapshot["version"])
        self.seen = version
        reason = await self._apply(snapshot)
        if reason is not None:
            logger.warning(
                "snapshot_rejected", extra={"snapshot_version": version, "reason": reason}
            )
        ack = {"proxy": self.proxy_id, "version": version, "ok": reason is None}
        if reason is not None:
            ack["reason"] = reason
        await self.client.call("POST", "/v1/ack", ack)

    # -- the loops ---------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        failures = 0
        while True:
            try:
                await self.watch_once()
                failures = 0
            except (OSError, TimeoutError, ProtocolError, IdentityError, ValueError) as exc:
                delay = backoff_s(failures)
                failures += 1
                logger.warning(
                    "control_unreachable", extra={"error": str(exc), "retry_in_s": delay}
                )
                await asyncio.sleep(delay)

    async def start(self) -> None:
        """Get an identity and the first snapshot (retrying with backoff), start
        serving, and leave the watch and renewal loops running."""
        self._prepare_state_dir()
        self.audit = open_audit(self.settings.audit, clock=self.clock)
        self._load_existing()
        if self.credential is not None:
            self.renewer.on_installed(self.credential)
        td = self._requested_id().trust_domain
        cert = (self.cert_path, self.key_path) if self.credential is not None else None
        self.client = ControlClient(
            url=self.settings.control,
            bundle_pem=self._bundle_pem(),
            control_id=str(SpiffeId.control_plane(td)),
            cert=cert,
        )
        attempt = 0
        while self.credential is None:
            try:
                await self._fetch_svid()
            except (OSError, TimeoutError, ProtocolError) as exc:
                await asyncio.sleep(backoff_s(attempt))
                attempt += 1
                logger.warning("control_unreachable", extra={"error": str(exc)})
        while self.server is None:  # the data plane cannot start without a snapshot
            try:
                await self.watch_once()
            except (OSError, TimeoutError, ProtocolError) as exc:
                logger.warning("control_unreachable", extra={"error": str(exc)})
            if self.server is None:
                await asyncio.sleep(backoff_s(attempt))
                attempt += 1
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch_loop()),
            loop.create_task(self._renew_loop()),
        ]

    async def stop(self, drain_s: float) -> None:
        """Say goodbye (best effort), stop the loops and drain the data plane."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.client is not None:
            with contextlib.suppress(OSError, TimeoutError, ProtocolError):
                q = urlencode({"proxy": self.proxy_id})
                await self.client.call("POST", f"/v1/leave?{q}", timeout_s=1.0)
            self.client.reset()
        drains = [part.drain(drain_s) for part in (self.server, self.tcp) if part is not None]
        await asyncio.gather(*drains)
        if self.admin is not None:
            await self.admin.close()
        if self.audit is not None:
            self.audit.close()  # after the drain: the last decisions are written


def run_dynamic(settings: DynamicSettings) -> int:
    """Run a dynamic sidecar until SIGTERM/SIGINT; return the exit status."""
    import signal

    import uvloop

    async def main() -> int:
        proxy = DynamicProxy(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        starting = loop.create_task(proxy.start())
        stopping = loop.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return 1
        starting.result()  # raise a ConfigError from start-up
        await stop.wait()
        drain_s = proxy.server.config.timeouts.drain_s if proxy.server else 0.0
        await proxy.stop(drain_s)
        return 0

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())
