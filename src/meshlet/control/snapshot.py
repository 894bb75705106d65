"""Compile one workload's ``Snapshot``: only what its sidecar needs, versioned.

A snapshot holds the workload's inbound settings (the mTLS mode its
PeerAuthentications resolve to, and the security documents that select it),
and the services it may call with the endpoints registered right now (each with
the SPIFFE ID the sidecar must see when it connects), plus the routing
documents. The version is a digest of the content: two control planes (or one
restarted) compiling the same config and registry agree on it, so a proxy that
reconnects after a control-plane restart is not sent what it already runs.

The wire shape (``to_wire``) is a fragment of the sidecar's bootstrap file
(docs/proxy.md): the proxy merges its local listen addresses and identity files
in and validates the result with the same checks as ``--config``, so there is
one schema for static and dynamic sidecars.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshlet.config.istio_common import Resource
from meshlet.config.mesh import MeshWorkload
from meshlet.control.registry import Registry
from meshlet.control.store import MeshSource
from meshlet.policy.scope import (
    DEFAULT_ROOT_NAMESPACE,
    Workload,
    authorization_for,
    peer_scopes_for,
    request_authn_for,
)

__all__ = [
    "EndpointEntry",
    "InboundEntry",
    "ServiceEntry",
    "Snapshot",
    "WorkloadEntry",
    "compile_snapshot",
    "find_workload",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointEntry:
    address: str
    identity: str  # the SPIFFE ID the caller's sidecar must see on this endpoint
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEntry:
    name: str
    protocol: str
    endpoints: tuple[EndpointEntry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundEntry:
    mtls: str  # STRICT / PERMISSIVE / DISABLE
    mtls_source: str  # which PeerAuthentication decided, or "mesh.yaml"
    protocol: str
    app_port: int | None  # mesh.yaml's port for the app, when it names one


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadEntry:
    name: str
    namespace: str
    service_account: str
    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything one workload's sidecar is told, and the version naming it."""

    version: str
    config_digest: str  # which MeshSource it was compiled from (for logs)
    workload: WorkloadEntry
    inbound: InboundEntry | None
    services: tuple[ServiceEntry, ...]
    policies: tuple[Any, ...]  # JSON-able Istio security documents
    routing: tuple[Any, ...]  # JSON-able routing documents

    def to_wire(self) -> dict[str, Any]:
        """The JSON object a watch response carries."""
        return {"version": self.version, **_body(self)}

    def to_json(self) -> bytes:
        return json.dumps(self.to_wire(), sort_keys=True, default=str).encode()


def _body(s: Snapshot) -> dict[str, Any]:
    bootstrap: dict[str, Any] = {
        "workload": {
            "name": s.workload.name,
            "namespace": s.workload.namespace,
            "service_account": s.workload.service_account,
            "labels": dict(s.workload.labels),
        },
        "outbound": {
            "services": {
                svc.name: {
                    "protocol": svc.protocol,
                    "endpoints": [
                        {"address": ep.address, "identity": ep.identity, "labels": dict(ep.labels)}
                        for ep in svc.endpoints
                    ],
                }
                for svc in s.services
            }
        },
    }
    if s.inbound is not None:
        bootstrap["inbound"] = {"mtls": s.inbound.mtls, "protocol": s.inbound.protocol}
        if s.inbound.app_port is not None:
            bootstrap["inbound"]["app"] = f"127.0.0.1:{s.inbound.app_port}"
    return {
        "workload": s.workload.name,
        "bootstrap": bootstrap,
        "mtls_source": s.inbound.mtls_source if s.inbound else None,
        "policies": list(s.policies),
        "routing": list(s.routing),
    }


def find_workload(source: MeshSource, name: str) -> MeshWorkload | None:
    """The workload called ``name`` in ``mesh.yaml``."""
    for workload in source.mesh.workloads:
        if workload.name == name:
            return workload
    return None


def _inbound(source: MeshSource, w: MeshWorkload, scope: Workload) -> InboundEntry | None:
    if w.service is None:
        return None  # a client-only workload has no inbound listener
    service = next(s for s in source.mesh.services if s.name == w.service)
    resolution = peer_scopes_for(
        source.security.peer_authentications, scope, root_namespace=DEFAULT_ROOT_NAMESPACE
    ).resolve()
    if resolution.policy is None:  # no PeerAuthentication applies: mesh.yaml decides
        return InboundEntry(
            mtls=w.mtls, mtls_source="mesh.yaml", protocol=service.protocol, app_port=w.port
        )
    return InboundEntry(
        mtls=resolution.mode.value,
        mtls_source=f"PeerAuthentication {resolution.policy}",
        protocol=service.protocol,
        app_port=w.port,
    )


def _security_documents(source: MeshSource, scope: Workload) -> tuple[Any, ...]:
    """The security documents that select this workload (Istio's scoping: the
    deciding PeerAuthentications, every AuthorizationPolicy and RequestAuthentication
    in scope), plus the extension providers they may name."""
    root = DEFAULT_ROOT_NAMESPACE
    peers = peer_scopes_for(source.security.peer_authentications, scope, root_namespace=root)
    chosen = (
        {
            ("PeerAuthentication", p.namespace, p.name)
            for p in (peers.workload, peers.namespace, peers.mesh)
            if p is not None
        }
        | {
            ("AuthorizationPolicy", p.namespace, p.name)
            for p in authorization_for(
                source.security.authorization_policies, scope, root_namespace=root
            )
        }
        | {
            ("RequestAuthentication", p.namespace, p.name)
            for p in request_authn_for(
                source.security.request_authentications, scope, root_namespace=root
            )
        }
    )
    picked: list[Resource] = [
        r for r in source.security_resources if (r.kind, r.namespace, r.name) in chosen
    ]
    if picked:
        picked.extend(r for r in source.security_resources if r.kind == "ExtensionProvider")
    return tuple(r.document.data for r in picked)


def _services(source: MeshSource, registry: Registry) -> tuple[ServiceEntry, ...]:
    """Every service with at least one live endpoint. A service with none is left
    out: the caller's sidecar answers 'no route' (HTTP) or has no listener (TCP)
    at once instead of trying addresses that are not there. Opaque TCP services
    carry no local port: where the caller's app reaches one is the caller's
    machine's business (``meshlet proxy --tcp NAME=HOST:PORT``)."""
    out: list[ServiceEntry] = []
    for service in source.mesh.services:
        endpoints = tuple(
            EndpointEntry(address=rec.address or "", identity=rec.spiffe_id, labels=w.labels)
            for w in service.workloads
            for rec in registry.endpoints(w.name)
        )
        if endpoints:
            out.append(
                ServiceEntry(name=service.name, protocol=service.protocol, endpoints=endpoints)
            )
    return tuple(out)


def compile_snapshot(source: MeshSource, registry: Registry, workload: str) -> Snapshot | None:
    """The snapshot for ``workload``, or None when mesh.yaml does not name it."""
    w = find_workload(source, workload)
    if w is None:
        return None
    scope = Workload(
        namespace=w.namespace, labels=dict(w.labels), service_account=w.service_account
    )
    draft = Snapshot(
        version="",
        config_digest=source.digest,
        workload=WorkloadEntry(
            name=w.name, namespace=w.namespace, service_account=w.service_account, labels=w.labels
        ),
        inbound=_inbound(source, w, scope),
        services=_services(source, registry),
        policies=_security_documents(source, scope),
        routing=tuple(d.data for d in source.routing_documents),
    )
    canonical = json.dumps(_body(draft), sort_keys=True, default=str).encode()
    version = hashlib.sha256(canonical).hexdigest()[:16]
    return Snapshot(
        version=version,
        config_digest=draft.config_digest,
        workload=draft.workload,
        inbound=draft.inbound,
        services=draft.services,
        policies=draft.policies,
        routing=draft.routing,
    )


def spiffe_ids(source: MeshSource) -> Mapping[str, str]:
    """workload name -> the SPIFFE ID its sidecar must present."""
    td = source.mesh.trust_domain
    return {w.name: w.spiffe_id(td) for w in source.mesh.workloads}
