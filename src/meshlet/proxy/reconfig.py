"""Reconfiguring a running ``ProxyServer``, and describing it.

``rebind_problems`` says which changes would need new sockets (refused on a
running proxy); ``build_clusters`` turns the outbound HTTP services into
clusters, reusing the pools of endpoints that stay so warm connections survive
a change; ``describe_config`` is what ``/config_dump`` shows.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import Any

from meshlet.config.bootstrap import Address, BootstrapConfig, ServiceConfig
from meshlet.proxy.exchange import Listener
from meshlet.proxy.pool import Cluster, EndpointPool
from meshlet.proxy.tls import LoadedIdentity

__all__ = ["build_clusters", "describe_config", "rebind_problems"]

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
