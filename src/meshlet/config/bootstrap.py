"""The sidecar's static bootstrap file: ``meshlet proxy --config proxy.yaml``.

Read once at start-up: YAML with line numbers -> a strict pydantic schema
(``extra="forbid"``, so a misspelt security key is an error, never ignored) ->
frozen dataclasses the proxy uses. Addresses are parsed here and relative
identity paths are resolved against the bootstrap file's directory, so the
proxy never sees a string it has to interpret again. Every key is documented in
docs/proxy.md.
"""

from __future__ import annotations

import enum
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meshlet.config.source import Document, load_file
from meshlet.config.validation import validate_document
from meshlet.errors import ConfigError

__all__ = [
    "Address",
    "AuditConfig",
    "BootstrapConfig",
    "EndpointConfig",
    "IdentityFiles",
    "InboundConfig",
    "Limits",
    "MtlsMode",
    "OutboundConfig",
    "ServiceConfig",
    "Timeouts",
    "WorkloadConfig",
    "load_bootstrap",
    "parse_address",
    "parse_bootstrap",
]


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


# ---------------------------------------------------------------- schema (edge only)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _address(value: object) -> str:
    parse_address(value)  # type: ignore[arg-type]  # raises ValueError with the reason
    return value  # type: ignore[return-value]


class _IdentitySchema(_Strict):
    cert: str
    key: str
    bundle: str


class _InboundSchema(_Strict):
    listen: str
    app: str
    mtls: Literal["STRICT", "PERMISSIVE", "DISABLE"] = "STRICT"  # secure by default
    protocol: Literal["http", "tcp"] = "http"
    policies: list[str] = Field(default_factory=list)

    _check_listen = field_validator("listen", "app", mode="before")(_address)


class _EndpointSchema(_Strict):
    address: str
    identity: str
    labels: dict[str, str] = Field(default_factory=dict)

    _check_address = field_validator("address", mode="before")(_address)

    @field_validator("identity")
    @classmethod
    def _spiffe(cls, value: str) -> str:
        if not value.startswith("spiffe://") or "/" not in value[len("spiffe://") :]:
            raise ValueError(
                f"identity must be a SPIFFE ID 'spiffe://<domain>/<path>', got {value!r}"
            )
        return value


class _ServiceSchema(_Strict):
    protocol: Literal["http", "tcp"] = "http"
    endpoints: list[_EndpointSchema] = Field(min_length=1)
    listen: str | None = None

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: object) -> object:
        return value if value is None else _address(value)

    @model_validator(mode="after")
    def _tcp_needs_listen(self) -> _ServiceSchema:
        if self.protocol == "tcp" and self.listen is None:
            raise ValueError("a protocol: tcp service needs its own 'listen' address")
        if self.protocol == "http" and self.listen is not None:
            raise ValueError("'listen' is only for protocol: tcp (http shares outbound.listen)")
        return self


class _OutboundSchema(_Strict):
    listen: str
    services: dict[str, _ServiceSchema] = Field(default_factory=dict)
    routing: list[str] = Field(default_factory=list)

    _check_listen = field_validator("listen", mode="before")(_address)


class _WorkloadSchema(_Strict):
    name: str | None = None
    namespace: str | None = None
    service_account: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


_T = Timeouts()  # the documented defaults, read once
_L = Limits()


class _TimeoutsSchema(_Strict):
    connect_s: float = Field(default=_T.connect_s, gt=0)
    header_read_s: float = Field(default=_T.header_read_s, gt=0)
    idle_s: float = Field(default=_T.idle_s, gt=0)
    upstream_response_s: float = Field(default=_T.upstream_response_s, gt=0)
    drain_s: float = Field(default=_T.drain_s, ge=0)


class _LimitsSchema(_Strict):
    max_header_bytes: int = Field(default=_L.max_header_bytes, ge=1024, le=1024 * 1024)
    max_headers: int = Field(default=_L.max_headers, ge=1, le=10_000)
    max_idle_per_endpoint: int = Field(default=_L.max_idle_per_endpoint, ge=0)


class _AuditSchema(_Strict):
    path: str


class _AccessLogSchema(_Strict):
    path: str


class _BootstrapSchema(_Strict):
    identity: _IdentitySchema
    admin: str | None = "127.0.0.1:15000"
    inbound: _InboundSchema | None = None
    outbound: _OutboundSchema | None = None
    workload: _WorkloadSchema = Field(default_factory=_WorkloadSchema)
    timeouts: _TimeoutsSchema = Field(default_factory=_TimeoutsSchema)
    limits: _LimitsSchema = Field(default_factory=_LimitsSchema)
    audit: _AuditSchema | None = None
    access_log: _AccessLogSchema | None = None

    @field_validator("admin", mode="before")
    @classmethod
    def _admin(cls, value: object) -> object:
        return value if value is None else _address(value)


# ---------------------------------------------------------------- conversion


def _module_exists(name: str) -> bool:
    """Whether an optional engine is part of this build, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _unsupported(doc: Document, schema: _BootstrapSchema) -> list[str]:
    """Security and routing keys whose engine is not in this build are refused,
    never ignored: silently allowing traffic a policy file meant to deny is the
    worst failure a mesh can have."""
    problems: list[str] = []
    if schema.inbound and schema.inbound.policies and not _module_exists("meshlet.proxy.authz"):
        problems.append(doc.problem(("inbound", "policies"), "not supported in this build"))
    if schema.outbound and schema.outbound.routing and not _module_exists("meshlet.proxy.routing"):
        problems.append(doc.problem(("outbound", "routing"), "not supported in this build"))
    inb, outb = schema.inbound, schema.outbound
    if inb and outb and inb.listen == outb.listen and not inb.listen.endswith(":0"):
        problems.append(doc.problem(("outbound", "listen"), "same address as inbound.listen"))
    if schema.inbound is None and schema.outbound is None:
        problems.append(doc.problem((), "at least one of 'inbound' and 'outbound' is required"))
    return problems


def _labels(mapping: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(mapping.items()))


def parse_bootstrap(doc: Document) -> BootstrapConfig:
    """Validate one document and convert it; every problem is reported at once."""
    if not isinstance(doc.data, dict):
        raise ConfigError(doc.problem((), "the bootstrap must be a mapping"))
    schema = validate_document(_BootstrapSchema, doc)
    problems = _unsupported(doc, schema)
    if problems:
        raise ConfigError(problems)
    base = Path(doc.file).parent if doc.file and not doc.file.startswith("<") else Path.cwd()

    def resolve(path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (base / p)

    inbound = None
    if schema.inbound is not None:
        inbound = InboundConfig(
            listen=parse_address(schema.inbound.listen),
            app=parse_address(schema.inbound.app),
            mtls=MtlsMode(schema.inbound.mtls),
            protocol=schema.inbound.protocol,
            policies=tuple(resolve(p) for p in schema.inbound.policies),
        )
    outbound = None
    if schema.outbound is not None:
        services = tuple(
            ServiceConfig(
                name=name,
                protocol=svc.protocol,
                endpoints=tuple(
                    EndpointConfig(
                        address=parse_address(ep.address),
                        identity=ep.identity,
                        labels=_labels(ep.labels),
                    )
                    for ep in svc.endpoints
                ),
                listen=parse_address(svc.listen) if svc.listen else None,
            )
            for name, svc in schema.outbound.services.items()
        )
        outbound = OutboundConfig(
            listen=parse_address(schema.outbound.listen),
            services=services,
            routing=tuple(resolve(p) for p in schema.outbound.routing),
        )
    t, lim, w = schema.timeouts, schema.limits, schema.workload
    return BootstrapConfig(
        identity=IdentityFiles(
            cert=resolve(schema.identity.cert),
            key=resolve(schema.identity.key),
            bundle=resolve(schema.identity.bundle),
        ),
        admin=parse_address(schema.admin) if schema.admin is not None else None,
        inbound=inbound,
        outbound=outbound,
        workload=WorkloadConfig(
            name=w.name,
            namespace=w.namespace,
            service_account=w.service_account,
            labels=_labels(w.labels),
        ),
        timeouts=Timeouts(
            connect_s=t.connect_s,
            header_read_s=t.header_read_s,
            idle_s=t.idle_s,
            upstream_response_s=t.upstream_response_s,
            drain_s=t.drain_s,
        ),
        limits=Limits(
            max_header_bytes=lim.max_header_bytes,
            max_headers=lim.max_headers,
            max_idle_per_endpoint=lim.max_idle_per_endpoint,
        ),
        audit=AuditConfig(path=resolve(schema.audit.path)) if schema.audit else None,
        access_log=resolve(schema.access_log.path) if schema.access_log else None,
        source=doc.file,
    )


def load_bootstrap(path: str | Path) -> BootstrapConfig:
    """Read and check a bootstrap file; raise ConfigError with file:line lines."""
    documents = load_file(path)
    if len(documents) != 1:
        raise ConfigError(f"{path}: a bootstrap file holds exactly one YAML document")
    return parse_bootstrap(documents[0])
