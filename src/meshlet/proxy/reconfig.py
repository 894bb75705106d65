"""Reconfiguring a running ``ProxyServer``, and describing it.

``Reconfigurable.apply_config`` (a mixin of ``ProxyServer``, whose state it
uses) makes a new config live without rebinding; ``rebind_problems`` says which
changes would need new sockets (refused on a running proxy); ``build_clusters``
turns the outbound HTTP services into clusters, reusing the pools of endpoints
that stay so warm connections survive a change; ``describe_config`` is what
``/config_dump`` shows.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from meshlet.clock import Clock
from meshlet.config.bootstrap import Address, BootstrapConfig, ServiceConfig
from meshlet.errors import ConfigError
from meshlet.proxy.exchange import Listener
from meshlet.proxy.inbound import InboundRouter
from meshlet.proxy.outbound import OutboundRouter
from meshlet.proxy.pool import Cluster, EndpointPool
from meshlet.proxy.tls import LoadedIdentity

if TYPE_CHECKING:
    from meshlet.proxy.hooks import InboundGate
    from meshlet.telemetry.audit import AuditLog

__all__ = ["Reconfigurable", "build_clusters", "describe_config", "rebind_problems"]

# An endpoint pool is reused when the endpoint's address, identity and labels stay.
PoolKey = tuple[Address, str | None, tuple[tuple[str, str], ...]]


def rebind_problems(old: BootstrapConfig, new: BootstrapConfig) -> list[str]:
    """What in ``new`` cannot be applied without rebinding (empty: all of it can)."""
    problems = [
        what
        for what, a, b in (
            ("inbound", old.inbound is None, new.inbound is None),
            ("outbound", old.outbound is None, new.outbound is None),
            ("identity", old.identity, new.identity),
        )
        if a != b
    ]
    if old.inbound is not None and new.inbound is not None:
        o, n = old.inbound, new.inbound
        problems += [
            f"inbound.{k}" for k in ("listen", "app", "protocol") if getattr(o, k) != getattr(n, k)
        ]
        if (o.policies, o.mtls) != (n.policies, n.mtls) and n.protocol != "http":
            problems.append("inbound.policies/mtls (protocol tcp)")
    if old.outbound is not None and new.outbound is not None:
        o2, n2 = old.outbound, new.outbound
        if o2.listen != n2.listen:
            problems.append("outbound.listen")
        tcp = {s for s in n2.services if s.protocol != "http"}
        if tcp != {s for s in o2.services if s.protocol != "http"}:
            problems.append("outbound tcp services")
    return problems


def build_clusters(
    services: Iterable[ServiceConfig],
    *,
    listener: Listener,
    ssl_context: Callable[[], ssl.SSLContext],
    kept: dict[PoolKey, EndpointPool],
) -> dict[bytes, Cluster]:
    """One cluster per HTTP service, keyed by its lower-case name; endpoints in
    ``kept`` keep their pool (and are removed from it: what is left has gone)."""
    clusters: dict[bytes, Cluster] = {}
    for svc in services:
        if svc.protocol != "http":
            continue
        pools = tuple(
            kept.pop(key)
            if (key := (ep.address, ep.identity, ep.labels)) in kept
            else EndpointPool(
                address=ep.address,
                identity=ep.identity,
                listener=listener,
                ssl_context=ssl_context,
                labels=ep.labels,
            )
            for ep in svc.endpoints
        )
        cluster = Cluster(name=svc.name, protocol=svc.protocol, endpoints=pools)
        clusters[svc.name.encode("ascii").lower()] = cluster
    return clusters


class Reconfigurable:
    """``apply_config`` for ``ProxyServer`` (a mixin: the state is the server's)."""

    if TYPE_CHECKING:
        config: BootstrapConfig
        clock: Clock
        audit: AuditLog | None
        outbound_listener: Listener | None
        inbound_listener: Listener | None
        _gate: InboundGate | None
        _retired_gates: list[InboundGate]
        _clusters: list[Cluster]
        _sweeper: asyncio.TimerHandle | None
        _closed: bool

        def _current(self) -> LoadedIdentity: ...
        def _schedule_sweep(self, loop: asyncio.AbstractEventLoop) -> None: ...

    def apply_config(self, new: BootstrapConfig) -> None:
        """Make ``new`` live without rebinding: the outbound HTTP service table, the
        routing plan executor and the inbound gate are built off the request path
        and swapped in with one assignment each (pools of unchanged endpoints are
        kept, so warm connections survive); an inbound mTLS mode change applies to
        connections accepted from then on. Anything that would need a rebind
        raises ConfigError and the old config keeps serving (the dynamic client
        NACKs it). A new gate writes to the server's ``audit`` log when it has
        one, so a policy change continues the same hash chain."""
        old = self.config
        problems = rebind_problems(old, new)
        if problems:
            raise ConfigError(f"cannot change on a running proxy: {', '.join(problems)}")
        gate_changed = (
            old.inbound is not None
            and new.inbound is not None
            and old.inbound.policies != new.inbound.policies
        )
        gate = self._gate
        if gate_changed:  # build first: a bad policy raises before anything changed
            from meshlet.proxy import authz

            gate = authz.build_gate(new, clock=self.clock, audit=self.audit)
        routing_changed = (
            old.outbound is not None
            and new.outbound is not None
            and old.outbound.routing != new.outbound.routing
        )
        traffic_router = None
        if routing_changed and new.outbound is not None and new.outbound.routing:
            from meshlet.traffic.loader import load_routing
            from meshlet.traffic.router import Router as TrafficRouter

            traffic_router = TrafficRouter(load_routing(new.outbound.routing))  # may raise
        listener = self.outbound_listener
        if new.outbound is not None and listener is not None:
            router = listener.router
            assert isinstance(router, OutboundRouter), "BUG: outbound listener without router"
            kept = {
                (p.address, p.identity, p.labels): p for c in self._clusters for p in c.endpoints
            }
            client_ctx = lambda: self._current().client  # noqa: E731 - read per connect
            clusters = build_clusters(
                new.outbound.services, listener=listener, ssl_context=client_ctx, kept=kept
            )
            router.clusters = clusters  # the single reference swap
            if routing_changed:
                from meshlet.proxy.routing import OutboundTraffic

                # In-flight requests finish on the old plan executor; new ones
                # take the new one (the old one is not closed under them).
                router.traffic = (
                    None
                    if traffic_router is None
                    else OutboundTraffic(traffic_router, clusters, listener=listener)
                )
            elif router.traffic is not None:
                router.traffic.update_clusters(clusters)
            self._clusters = list(clusters.values())
            for pool in kept.values():  # endpoints that left: drop their idle connections
                for conn in list(pool.idle):
                    conn.close()
        if gate_changed and self.inbound_listener is not None:
            inbound = self.inbound_listener.router
            assert isinstance(inbound, InboundRouter), "BUG: inbound listener without router"
            inbound.gate = gate
            if self._gate is not None:
                # Its records go on being written; close() drains it at the end.
                self._retired_gates.append(self._gate)
            self._gate = gate
        self.config = new
        if routing_changed and self._sweeper is not None and not self._closed:
            # The sweep's interval follows the shortest timeout, route ones included.
            self._sweeper.cancel()
            self._schedule_sweep(asyncio.get_running_loop())


def describe_config(
    cfg: BootstrapConfig,
    ident: LoadedIdentity | None,
    *,
    inbound: tuple[str, int] | None,
    outbound: tuple[str, int] | None,
    gate: object,
) -> dict[str, Any]:
    """The running configuration as JSON-able data; paths only, never key bytes."""
    out: dict[str, Any] = {
        "source": cfg.source,
        "identity": {
            "cert": str(cfg.identity.cert),
            "key": str(cfg.identity.key),
            "bundle": str(cfg.identity.bundle),
            "spiffe_id": ident.spiffe_id if ident else None,
            "serial": ident.serial if ident else None,
            "not_after": ident.not_after if ident else None,
        },
        "admin": str(cfg.admin) if cfg.admin else None,
        "timeouts": {k: getattr(cfg.timeouts, k) for k in cfg.timeouts.__slots__},
        "limits": {k: getattr(cfg.limits, k) for k in cfg.limits.__slots__},
        "workload": {
            "name": cfg.workload.name,
            "namespace": cfg.workload.namespace,
            "service_account": cfg.workload.service_account,
            "labels": dict(cfg.workload.labels),
        },
    }
    if cfg.inbound is not None:
        out["inbound"] = {
            "listen": str(cfg.inbound.listen),
            "bound": _fmt(inbound),
            "app": str(cfg.inbound.app),
            "mtls": cfg.inbound.mtls.value,
            "protocol": cfg.inbound.protocol,
            "policies": [str(p) for p in cfg.inbound.policies],
            "gate": type(gate).__name__ if gate is not None else None,
        }
    if cfg.outbound is not None:
        out["outbound"] = {
            "listen": str(cfg.outbound.listen),
            "bound": _fmt(outbound),
            "services": {
                svc.name: {
                    "protocol": svc.protocol,
                    "listen": str(svc.listen) if svc.listen else None,
                    "endpoints": [
                        {
                            "address": str(ep.address),
                            "identity": ep.identity,
                            "labels": dict(ep.labels),
                        }
                        for ep in svc.endpoints
                    ],
                }
                for svc in cfg.outbound.services
            },
        }
    return out


def _fmt(addr: tuple[str, int] | None) -> str | None:
    return None if addr is None else f"{addr[0]}:{addr[1]}"
