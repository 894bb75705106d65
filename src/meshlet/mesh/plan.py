"""From a ``MeshConfig`` to what ``meshlet up`` runs: one sidecar + app per replica.

Planning is pure: ports come from a function the caller passes in, and the result
says, for each replica, which ports it uses, which identity it gets, which
command and environment its app runs with, and the proxy bootstrap (as plain data,
ready to be written as YAML). The runner does the I/O.

Ports: every sidecar's outbound and inbound ports and every app's port must be
known before anything starts, because each sidecar's outbound table lists every
other sidecar's inbound address and each app is told its sidecar's outbound
address. A pre-bound socket cannot be passed across ``exec`` into a process that
reads its port from a config file, so ports are picked by binding 127.0.0.1:0 and
closed just before start (see ``meshlet.mesh.ports`` for the race and its handling).
The admin port is the exception: each sidecar binds port 0 and announces it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshlet.config.mesh import MeshConfig, MeshWorkload

HOST = "127.0.0.1"  # a local mesh lives on loopback only


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaPlan:
    """One replica of a workload: its sidecar and its app."""

    name: str  # "<workload>-<index>", unique in the mesh
    index: int
    workload: MeshWorkload
    spiffe_id: str
    app_port: int | None  # None for a client-only workload
    inbound_port: int | None  # None for a client-only workload
    outbound_port: int
    directory: Path  # state_dir/replicas/<name>: SVID, bootstrap, logs
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    readiness_path: str | None
    # protocol: tcp services have no Host header to route on, so each gets its own
    # local port on this replica's sidecar (the app finds it in MESHLET_TCP_<NAME>)
    tcp_ports: tuple[tuple[str, int], ...] = ()

    @property
    def service(self) -> str | None:
        return self.workload.service

    @property
    def outbound_url(self) -> str:
        return f"http://{HOST}:{self.outbound_port}"

    @property
    def bootstrap_path(self) -> Path:
        return self.directory / "proxy.yaml"


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshPlan:
    config: MeshConfig
    replicas: tuple[ReplicaPlan, ...]

    def of_service(self, service: str) -> tuple[ReplicaPlan, ...]:
        return tuple(r for r in self.replicas if r.service == service)


@dataclass(frozen=True, slots=True, kw_only=True)
class Features:
    """Which optional engines this build's sidecar has; keys for missing engines are
    left out of bootstraps (the proxy refuses them, rightly) and reported."""

    policies: bool
    routing: bool


def tcp_env_name(service: str) -> str:
    """``grpc-echo`` -> ``MESHLET_TCP_GRPC_ECHO``: where an app finds the local port
    of a ``protocol: tcp`` service."""
    return "MESHLET_TCP_" + service.upper().replace("-", "_")


def _fill(text: str, values: Mapping[str, str]) -> str:
    # str.format would choke on JSON braces in a command; replace known names only.
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def plan_mesh(config: MeshConfig, *, next_port: Callable[[], int], python: str) -> MeshPlan:
    """Assign ports, identities, commands and directories to every replica."""
    replicas: list[ReplicaPlan] = []
    base = config.state_dir / "replicas"
    for workload in config.workloads:
        for index in range(workload.replicas):
            name = f"{workload.name}-{index}"
            is_service = workload.service is not None
            app_port = (workload.port or next_port()) if is_service else None
            inbound_port = next_port() if is_service else None
            outbound_port = next_port()
            tcp_ports = tuple((s.name, next_port()) for s in config.services if s.protocol == "tcp")
            values = {
                "python": python,
                "port": str(app_port or ""),
                "name": name,
                "replica": str(index),
                "service": workload.service or "",
                "outbound": f"http://{HOST}:{outbound_port}",
                "state_dir": str(config.state_dir),
                "mesh_dir": str(config.source.parent),
            }
            spiffe_id = workload.spiffe_id(config.trust_domain)
            env = {
                # The app reaches every service through its sidecar: HTTP clients
                # (curl, requests, httpx, urllib) send absolute-form requests to it.
                "HTTP_PROXY": values["outbound"],
                "http_proxy": values["outbound"],
                "NO_PROXY": "",
                "no_proxy": "",
                "MESHLET_OUTBOUND": values["outbound"],
                "MESHLET_WORKLOAD": workload.name,
                "MESHLET_REPLICA": name,
                "MESHLET_SPIFFE_ID": spiffe_id,
                "PYTHONUNBUFFERED": "1",  # app logs reach the log file as they happen
                **({"PORT": str(app_port)} if app_port else {}),
                **{tcp_env_name(svc): f"{HOST}:{port}" for svc, port in tcp_ports},
                **{k: _fill(v, values) for k, v in workload.env},
            }
            replicas.append(
                ReplicaPlan(
                    name=name,
                    index=index,
                    workload=workload,
                    spiffe_id=spiffe_id,
                    app_port=app_port,
                    inbound_port=inbound_port,
                    outbound_port=outbound_port,
                    directory=base / name,
                    argv=tuple(_fill(arg, values) for arg in workload.command),
                    env=tuple(env.items()),
                    readiness_path=workload.readiness_path,
                    tcp_ports=tcp_ports,
                )
            )
    return MeshPlan(config=config, replicas=tuple(replicas))


def bootstrap_for(plan: MeshPlan, replica: ReplicaPlan, features: Features) -> dict[str, Any]:
    """The static bootstrap (docs/proxy.md) for ``replica``'s sidecar, as data."""
    config = plan.config
    services: dict[str, Any] = {}
    for service in config.services:
        services[service.name] = {
            "protocol": service.protocol,
            "endpoints": [
                {
                    "address": f"{HOST}:{r.inbound_port}",
                    "identity": r.spiffe_id,
                    "labels": dict(r.workload.labels),
                }
                for r in plan.of_service(service.name)
            ],
        }
    for name, port in replica.tcp_ports:
        services[name]["listen"] = f"{HOST}:{port}"
    workload = replica.workload
    boot: dict[str, Any] = {
        "identity": {"cert": "cert.pem", "key": "key.pem", "bundle": "bundle.pem"},
        "admin": f"{HOST}:0",  # announced on start; `meshlet status` reads it from state
        "workload": {
            "name": workload.name,
            "namespace": workload.namespace,
            "service_account": workload.service_account,
            "labels": dict(workload.labels),
        },
        "outbound": {"listen": f"{HOST}:{replica.outbound_port}", "services": services},
    }
    if features.routing and config.routing:
        boot["outbound"]["routing"] = [str(p) for p in config.routing]
    if replica.inbound_port is not None:
        service = next(s for s in config.services if s.name == workload.service)
        boot["inbound"] = {
            "listen": f"{HOST}:{replica.inbound_port}",
            "app": f"{HOST}:{replica.app_port}",
            "mtls": workload.mtls,
            "protocol": service.protocol,
        }
        if features.policies and config.policies:
            boot["inbound"]["policies"] = [str(p) for p in config.policies]
    if config.audit:
        boot["audit"] = {"path": str(config.state_dir / "audit" / f"{replica.name}.jsonl")}
    return boot
