"""``ProxyServer``: the sidecar's listeners, identity, deadline sweep and drain.

Binding and the accept loops live in ``proxy/accept.py``; building clusters,
making a new config live (``apply_config``) and describing the running one in
``proxy/reconfig.py``.

Deadlines (header read, idle, upstream response) are fields on connections;
one periodic sweep per server checks them and refreshes a coarse clock, so the
unrouted request path never arms a timer (routed requests with a route timeout
arm one each: ``proxy/flight_retry.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from meshlet.clock import Clock, MonotonicClock
from meshlet.config.bootstrap import BootstrapConfig, MtlsMode, WorkloadConfig
from meshlet.errors import ConfigError, IdentityError
from meshlet.proxy.accept import ListenerSetup, bind_listener
from meshlet.proxy.exchange import Listener, RequestIds
from meshlet.proxy.hooks import InboundGate
from meshlet.proxy.inbound import InboundRouter
from meshlet.proxy.outbound import OutboundRouter
from meshlet.proxy.pool import Cluster, EndpointPool
from meshlet.proxy.reconfig import Reconfigurable, build_clusters, describe_config
from meshlet.proxy.tls import LoadedIdentity, load_identity

if TYPE_CHECKING:
    from meshlet.telemetry.audit import AuditLog
    from meshlet.telemetry.metrics import GoldenMetrics

__all__ = ["ProxyServer"]

logger = logging.getLogger(__name__)


class ProxyServer(ListenerSetup, Reconfigurable):
    """One worker's data plane: an inbound and/or outbound HTTP listener."""

    def __init__(
        self,
        config: BootstrapConfig,
        *,
        metrics: GoldenMetrics,
        clock: Clock,
        inbound_gate: InboundGate | None = None,
        access_log: Any = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.access_log = access_log
        # The process's audit log, owned by the caller: every policy gate this
        # server builds (at start and in apply_config) writes to it. None: a gate
        # opens the bootstrap's ``audit`` path itself (static mode).
        self.audit = audit
        self._gate = inbound_gate
        self._retired_gates: list[InboundGate] = []  # replaced by apply_config
        self._identity: LoadedIdentity | None = None
        self._ids = RequestIds()
        self._socks: dict[str, socket.socket] = {}
        self._accepting: list[asyncio.Task[None]] = []
        self._handshakes: set[asyncio.Task[None]] = set()
        self._listeners: list[Listener] = []
        self._clusters: list[Cluster] = []
        self._app: EndpointPool | None = None
        self._tcp: list[Any] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._started = False
        self._closed = False
        self.inbound_listener: Listener | None = None
        self.outbound_listener: Listener | None = None

    # -- identity -----------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Listeners bound and an identity loaded (what ``/ready`` reports)."""
        return self._started and not self._closed and self._identity is not None

    @property
    def identity(self) -> LoadedIdentity | None:
        """The current SVID (``spiffe_id``, ``not_after``, ``serial``, ...)."""
        return self._identity

    def _current(self) -> LoadedIdentity:
        identity = self._identity
        if identity is None:
            raise IdentityError("no identity loaded")
        return identity

    def _principal(self) -> str:
        return self._identity.spiffe_id if self._identity is not None else "unknown"

    @property
    def workload(self) -> WorkloadConfig:
        """Who this sidecar serves: the bootstrap's ``workload`` with unset fields
        taken from the SVID's SPIFFE ID (``/ns/<namespace>/sa/<service_account>``;
        the name defaults to the service account, as for most Deployments)."""
        w = self.config.workload
        if self._identity is None or (w.name and w.namespace and w.service_account):
            return w
        from meshlet.identity.spiffeid import SpiffeId

        sid = SpiffeId.parse(self._identity.spiffe_id)
        sa = w.service_account or sid.service_account
        return WorkloadConfig(
            name=w.name or sa,
            namespace=w.namespace or sid.namespace,
            service_account=sa,
            labels=w.labels,
        )

    def reload_identity(self) -> None:
        """Re-read cert/key/bundle and swap both contexts in one assignment; on any
        problem keep the old identity and raise IdentityError."""
        new = load_identity(self.config.identity)
        old = self._identity
        self._identity = new
        if old is None or old.serial != new.serial:
            logger.info("identity_loaded", extra={"spiffe_id": new.spiffe_id, "serial": new.serial})

    # -- start --------------------------------------------------------------

    async def start(
        self, sockets: dict[str, socket.socket] | None = None, *, reuse_port: bool = False
    ) -> None:
        """Load the identity, bind (or adopt ``sockets`` keyed "inbound"/"outbound",
        or "tcp:<service>" for opaque outbound services) and start accepting."""
        cfg = self.config
        if self._gate is None and cfg.inbound is not None and cfg.inbound.policies:
            try:
                from meshlet.proxy import authz
            except ImportError as exc:
                raise ConfigError("inbound.policies: not supported in this build") from exc
            self._gate = authz.build_gate(cfg, clock=self.clock, audit=self.audit)
        self.reload_identity()
        workload = self.workload  # unset fields come from the SVID just loaded
        self.metrics.fill_workload(workload=workload.name or "", namespace=workload.namespace or "")
        given = dict(sockets or {})
        loop = asyncio.get_running_loop()
        if cfg.outbound is not None:
            sock = (
                given.pop("outbound")
                if "outbound" in given
                else bind_listener(cfg.outbound.listen, reuse_port)
            )
            self._socks["outbound"] = sock
            self.outbound_listener = self._outbound_listener()
            self._spawn_accept(loop, sock, self.outbound_listener, MtlsMode.DISABLE)
            await self._start_tcp_outbound(given, reuse_port)
        if cfg.inbound is not None:
            sock = (
                given.pop("inbound")
                if "inbound" in given
                else bind_listener(cfg.inbound.listen, reuse_port)
            )
            self._socks["inbound"] = sock
            if cfg.inbound.protocol == "tcp":
                await self._start_tcp_inbound(sock)
            else:
                self.inbound_listener = self._inbound_listener()
                self._spawn_accept(loop, sock, self.inbound_listener, cfg.inbound.mtls)
        self._started = True
        self._schedule_sweep(loop)

    def _new_listener(self, side: str, router: Any) -> Listener:
        listener = Listener(
            side=side,
            router=router,
            metrics=self.metrics,
            monotonic=_fast_monotonic(self.clock),
            limits=self.config.limits,
            timeouts=self.config.timeouts,
            ids=self._ids,
            access_log=self.access_log,
            wall=self.clock.wall,
        )
        self._listeners.append(listener)
        return listener

    def _outbound_listener(self) -> Listener:
        assert self.config.outbound is not None, "BUG: no outbound config"
        router = OutboundRouter(clusters={}, local_principal=self._principal)
        listener = self._new_listener("outbound", router)
        client_ctx = lambda: self._current().client  # noqa: E731 - read per connect
        router.clusters = build_clusters(
            self.config.outbound.services, listener=listener, ssl_context=client_ctx, kept={}
        )
        self._clusters.extend(router.clusters.values())
        if self.config.outbound.routing:
            from meshlet.proxy.routing import OutboundTraffic
            from meshlet.traffic.loader import load_routing
            from meshlet.traffic.router import Router as TrafficRouter

            routing = TrafficRouter(load_routing(self.config.outbound.routing))
            router.traffic = OutboundTraffic(routing, router.clusters, listener=listener)
        self.metrics.set_outstanding_source(self._outstanding)
        return listener

    def _outstanding(self) -> Iterator[tuple[str, str, int]]:
        """(cluster, endpoint, in-flight) for ``meshlet_endpoint_outstanding_requests``."""
        for cluster in self._clusters:
            for address, n in cluster.outstanding().items():
                yield cluster.name, address, n
        router = self.outbound_listener.router if self.outbound_listener else None
        if isinstance(router, OutboundRouter) and router.traffic is not None:
            yield from router.traffic.outstanding()

    def _inbound_listener(self) -> Listener:
        assert self.config.inbound is not None, "BUG: no inbound config"
        router = InboundRouter(app=None, gate=self._gate, local_principal=self._principal)  # type: ignore[arg-type]
        listener = self._new_listener("inbound", router)
        self._app = EndpointPool(
            address=self.config.inbound.app, identity=None, listener=listener, ssl_context=None
        )
        router.app = self._app
        listener.scheme = b"https"
        return listener

    # -- deadlines ----------------------------------------------------------

    def _schedule_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        t = self.config.timeouts
        shortest = min(t.header_read_s, t.idle_s, t.upstream_response_s, t.connect_s)
        router = self.outbound_listener.router if self.outbound_listener else None
        if isinstance(router, OutboundRouter) and router.traffic is not None:
            shortest = min(shortest, router.traffic.shortest_timeout_s())  # route timeouts
        interval = shortest / 4
        interval = min(max(interval, 0.02), 1.0)
        self._sweeper = loop.call_later(interval, self._sweep, loop, interval)

    def _sweep(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        now = self.clock.monotonic()
        for listener in self._listeners:
            listener.now = now
            for conn in [c for c in listener.conns if c.deadline and now > c.deadline]:
                conn.on_timeout()
            for up in list(listener.upstreams):
                if up.ticks != up.seen_ticks:
                    up.seen_ticks = up.ticks
                    up.quiet_since = now
                elif up.idle_limit and now - up.quiet_since > up.idle_limit:
                    up.on_timeout()
                    continue
                if up.deadline and now > up.deadline:
                    up.on_timeout()
        if not self._closed:
            self._sweeper = loop.call_later(interval, self._sweep, loop, interval)

    # -- stop ---------------------------------------------------------------

    def _stop_accepting(self) -> None:
        for task in self._accepting:
            task.cancel()
        self._accepting.clear()
        for tcp in self._tcp:
            tcp.stop_accepting()
        for sock in self._socks.values():
            sock.close()

    async def drain(self, deadline_s: float) -> None:
        """Stop accepting; idle connections close now, busy ones after their
        current response (answered with ``connection: close``); whatever is
        still open at the deadline is cut."""
        self._stop_accepting()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        for listener in self._listeners:
            listener.draining = True
            for conn in list(listener.conns):
                conn.close_if_idle()
        tcp_drains = [loop.create_task(t.drain(deadline_s)) for t in self._tcp]
        empty = asyncio.Event()

        def check() -> None:
            if not any(listener.conns for listener in self._listeners):
                empty.set()

        for listener in self._listeners:
            listener.on_empty = check
        check()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(empty.wait(), max(end - loop.time(), 0.0))
        if tcp_drains:
            await asyncio.gather(*tcp_drains, return_exceptions=True)
        await self.close()

    async def close(self) -> None:
        """Close everything now (in-flight requests are cut)."""
        if self._closed:
            return
        self._closed = True
        self._stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in list(self._handshakes):
            task.cancel()
        for listener in self._listeners:
            for conn in list(listener.conns):
                conn.abort()
            for up in list(listener.upstreams):
                up.close()
        for cluster in self._clusters:
            cluster.close()
        if self.outbound_listener is not None:
            outbound = self.outbound_listener.router
            if isinstance(outbound, OutboundRouter) and outbound.traffic is not None:
                outbound.traffic.close()
        if self._app is not None:
            self._app.close()
        for tcp in self._tcp:
            await tcp.close()
        await asyncio.sleep(0)  # let transports run their connection_lost
        # Flush what the request path queued: a ``--workers`` child ends with
        # os._exit, which skips atexit, so the audit and access logs are drained
        # here rather than at interpreter exit.
        for gate in (*self._retired_gates, self._gate):
            gate_close = getattr(gate, "close", None)
            if gate_close is not None:
                gate_close()
        if self.access_log is not None:
            self.access_log.close()

    # -- introspection --------------------------------------------------------

    def _address(self, key: str) -> tuple[str, int] | None:
        sock = self._socks.get(key)
        if sock is None or sock.fileno() < 0:
            return None
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def inbound_address(self) -> tuple[str, int] | None:
        return self._address("inbound")

    @property
    def outbound_address(self) -> tuple[str, int] | None:
        return self._address("outbound")

    def tcp_address(self, service: str) -> tuple[str, int] | None:
        return self._address(f"tcp:{service}")

    def config_dump(self) -> dict[str, Any]:
        """The running configuration as JSON-able data; paths only, never key bytes."""
        return describe_config(
            self.config,
            self._identity,
            inbound=self.inbound_address,
            outbound=self.outbound_address,
            gate=self._gate,
        )


def _fast_monotonic(clock: Clock) -> Callable[[], float]:
    """The real clock's reading without a Python frame per call (the request path
    reads it two or three times per request); any other clock as given."""
    return time.monotonic if isinstance(clock, MonotonicClock) else clock.monotonic
