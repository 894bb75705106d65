"""Dynamic mode's snapshot -> bootstrap merge.

A control-plane snapshot says what to serve; only the sidecar's machine knows
where (listen addresses, the app's port, the identity files in the state
directory). The two are merged into a bootstrap document and checked by the
same reader as ``--config``, so a snapshot can never reach the proxy in a
shape a bootstrap file could not have.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshlet.config.bootstrap import (
    Address,
    BootstrapConfig,
    IdentityFiles,
    ServiceConfig,
    parse_bootstrap,
)
from meshlet.config.source import Document
from meshlet.errors import ConfigError
from meshlet.identity.pemfiles import write_atomic

__all__ = ["DynamicSettings", "snapshot_config", "split_tcp"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DynamicSettings:
    """What only the sidecar's own machine knows; the rest comes from snapshots."""

    control: str  # https://host:port
    workload: str
    token: str | None
    state_dir: Path
    bundle: Path | None  # trust bundle for the first contact
    inbound: Address
    outbound: Address
    app: Address | None  # default: 127.0.0.1:<the port mesh.yaml names>
    admin: Address | None
    advertise: str | None = None  # host to register instead of the bound one
    # Local listen address per opaque TCP service (``--tcp NAME=HOST:PORT``); a
    # TCP service not named here listens on the outbound host, port 0 (announced).
    tcp: tuple[tuple[str, Address], ...] = ()
    audit: Path | None = None  # hash-chained audit log of policy decisions; None: off

    def tcp_listen(self, service: str) -> Address:
        """Where the app reaches opaque TCP service ``service`` on this machine."""
        for name, address in self.tcp:
            if name == service:
                return address
        return Address(host=self.outbound.host, port=0)


def snapshot_config(
    snapshot: dict[str, Any], settings: DynamicSettings, identity: IdentityFiles
) -> BootstrapConfig:
    """Merge a snapshot with the local settings and validate it like a
    bootstrap file; ConfigError says what is wrong (the NACK reason)."""
    s = settings
    data: dict[str, Any] = json.loads(json.dumps(snapshot["bootstrap"]))
    data["identity"] = {
        "cert": str(identity.cert),
        "key": str(identity.key),
        "bundle": str(identity.bundle),
    }
    data["admin"] = str(s.admin) if s.admin is not None else None
    data.setdefault("outbound", {})["listen"] = str(s.outbound)
    for name, service in data["outbound"].get("services", {}).items():
        if isinstance(service, dict) and service.get("protocol") == "tcp":
            service["listen"] = str(s.tcp_listen(str(name)))
    version = str(snapshot["version"])
    if "inbound" in data:
        data["inbound"]["listen"] = str(s.inbound)
        if s.app is not None:
            data["inbound"]["app"] = str(s.app)
        elif "app" not in data["inbound"]:
            raise ConfigError("no app address: pass --app (mesh.yaml names no port)")
        if snapshot.get("policies"):
            data["inbound"]["policies"] = [
                str(_write_documents(s.state_dir, "policies", snapshot["policies"]))
            ]
    if snapshot.get("routing"):
        data["outbound"]["routing"] = [
            str(_write_documents(s.state_dir, "routing", snapshot["routing"]))
        ]
    return parse_bootstrap(Document(data=data, file=f"<snapshot {version}>", index=0, line=1))


def split_tcp(config: BootstrapConfig) -> tuple[BootstrapConfig, tuple[ServiceConfig, ...]]:
    """``config`` without its opaque TCP services, and those services. The
    dynamic sidecar opens and closes TCP listeners itself as snapshots change
    (``dynamic_tcp``); ``ProxyServer`` only sees the HTTP side, which it can
    reconfigure live."""
    if config.outbound is None:
        return config, ()
    tcp = tuple(s for s in config.outbound.services if s.protocol == "tcp")
    if not tcp:
        return config, ()
    http = tuple(s for s in config.outbound.services if s.protocol != "tcp")
    outbound = dataclasses.replace(config.outbound, services=http)
    return dataclasses.replace(config, outbound=outbound), tcp


def _write_documents(state_dir: Path, kind: str, documents: list[Any]) -> Path:
    """Documents as a YAML stream (JSON is YAML), named by content so an
    unchanged set keeps its path and ``apply_config`` sees no change."""
    text = "\n---\n".join(json.dumps(d, sort_keys=True) for d in documents) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = state_dir / f"{kind}-{digest}.yaml"
    if not path.exists():
        write_atomic(path, text.encode(), mode=0o600)
    return path
