"""The runtime shape of the sidecar's bootstrap: frozen types the proxy uses.

``bootstrap`` reads YAML into these (and re-exports them: it is the one import
path). They sit apart so the reader, the proxy and the control plane's snapshot
merge share one definition without pulling the reader along.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


class MtlsMode(enum.Enum):
    """Istio's PeerAuthentication modes, same names and meaning."""

    STRICT = "STRICT"
    PERMISSIVE = "PERMISSIVE"
    DISABLE = "DISABLE"


@dataclass(frozen=True, slots=True, kw_only=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``host:port`` or ``[v6]:port``; raise ValueError saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"address must be a string 'host:port', got {text!r}")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"address {text!r} is not '[v6]:port'")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"address {text!r} is not 'host:port'")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"address {text!r}: port must be 0-65535")
    return Address(host=host, port=int(port_text))


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityFiles:
    cert: Path
    key: Path
    bundle: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    # Envoy's default connect timeout is 10 s; inside one mesh a peer that has not
    # answered a SYN in 1 s is gone, and failing fast lets a retry go elsewhere.
    connect_s: float = 1.0
    # Slowloris guard: the whole request head must arrive within this time of its
    # first byte (Envoy request_headers_timeout; nginx client_header_timeout 60 s).
    header_read_s: float = 10.0
    # A keep-alive connection with no request in flight is closed after this
    # (Envoy idle_timeout 1 h; nginx keepalive_timeout 75 s; we pick nginx's order).
    idle_s: float = 60.0
    # The upstream must start answering within this; inference can be slow to
    # produce the first token, so this is generous (Envoy route timeout 15 s is too
    # short for LLMs). Streams are then bound by idle_s between reads.
    upstream_response_s: float = 300.0
    # SIGTERM grace for in-flight requests (Kubernetes default grace period is 30 s;
    # a sidecar must finish well inside it).
    drain_s: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    # RFC 9110 sets no limit; Envoy's default max_request_headers_kb is 60 and
    # max_headers_count 100, which the issue adopts.
    max_header_bytes: int = 60 * 1024
    max_headers: int = 100
    # Upstream connections kept idle per endpoint (Envoy has no cap; a small
    # number covers keep-alive reuse without hoarding app sockets).
    max_idle_per_endpoint: int = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundConfig:
    listen: Address
    app: Address
    mtls: MtlsMode
    protocol: Literal["http", "tcp"]
    policies: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointConfig:
    address: Address
    identity: str
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceConfig:
    name: str
    protocol: Literal["http", "tcp"]
    endpoints: tuple[EndpointConfig, ...]
    # protocol tcp only: the app connects here (an opaque stream has no Host to
    # route on, so each tcp service needs its own local port).
    listen: Address | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundConfig:
    listen: Address
    services: tuple[ServiceConfig, ...]
    routing: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadConfig:
    """Who this sidecar serves. Unset fields are derived from the SVID's SPIFFE ID
    (``/ns/<namespace>/sa/<service_account>``) by the proxy once it is loaded."""

    name: str | None = None
    namespace: str | None = None
    service_account: str | None = None
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditConfig:
    path: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class BootstrapConfig:
    identity: IdentityFiles
    admin: Address | None
    inbound: InboundConfig | None
    outbound: OutboundConfig | None
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)
    audit: AuditConfig | None = None
    access_log: Path | None = None
    source: str = "<memory>"
