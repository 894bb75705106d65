"""``mesh.yaml``: a whole local mesh in one file, for ``meshlet up``.

It names the trust domain, the services (each with workloads: the command to run,
replicas, service account, labels, port) and the Istio/Gateway API files to load,
plus optional client-only workloads (a ``frontend`` that only calls out, an
``intruder`` for demos). The runner (``meshlet.mesh``) turns it into one sidecar
bootstrap per replica. Every key is documented in docs/mesh.md.

As everywhere in meshlet: YAML with line numbers -> a strict pydantic schema ->
frozen dataclasses; every problem is reported at once as ``file:line: path: msg``
and nothing is started when there is one.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from meshlet.config.source import Document, load_file
from meshlet.config.validation import validate_document
from meshlet.errors import ConfigError

__all__ = [
    "PLACEHOLDERS",
    "MeshConfig",
    "MeshService",
    "MeshWorkload",
    "load_mesh",
    "parse_mesh",
]

# Placeholders a command, env value or readiness path may use; the runner fills them.
PLACEHOLDERS = frozenset(
    {"python", "port", "name", "replica", "service", "outbound", "state_dir", "mesh_dir"}
)
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
# RFC 1123 label: service and workload names become host names and file names.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")  # SPIFFE spec: lowercase letters, digits, . - _

Restart = Literal["always", "on-failure", "never"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshWorkload:
    """One kind of process: ``replicas`` copies, each with its own sidecar."""

    name: str
    service: str | None  # None for a client-only workload (no inbound listener)
    namespace: str
    service_account: str
    command: tuple[str, ...]  # may hold {placeholders}, filled per replica
    replicas: int
    port: int | None  # the app's port; None: the runner picks a free one per replica
    labels: tuple[tuple[str, str], ...]
    env: tuple[tuple[str, str], ...]
    readiness_path: str | None  # HTTP GET that must answer 2xx before the app is ready
    restart: Restart
    mtls: Literal["STRICT", "PERMISSIVE", "DISABLE"]

    def spiffe_id(self, trust_domain: str) -> str:
        """Istio's shape: ``spiffe://<td>/ns/<namespace>/sa/<service_account>``."""
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshService:
    """A name other workloads call (``http://<name>/...``), served by its workloads."""

    name: str
    namespace: str
    protocol: Literal["http", "tcp"]
    workloads: tuple[MeshWorkload, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshConfig:
    trust_domain: str
    state_dir: Path
    services: tuple[MeshService, ...]
    clients: tuple[MeshWorkload, ...]
    policies: tuple[Path, ...]  # Istio security documents, given to every sidecar
    routing: tuple[Path, ...]  # Istio networking / Gateway API documents
    audit: bool
    control_plane: bool  # run `meshlet control` and sidecars in dynamic mode
    source: Path

    @property
    def workloads(self) -> tuple[MeshWorkload, ...]:
        """Every workload, services' first, in file order."""
        return (*(w for s in self.services for w in s.workloads), *self.clients)


# ---------------------------------------------------------------- schema (edge only)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _WorkloadSchema(_Strict):
    name: str | None = None  # default: the service name (one workload) or required
    command: list[str] | str
    replicas: int = Field(default=1, ge=1, le=64)
    service_account: str | None = None  # default: the workload's service (or client) name
    namespace: str | None = None  # default: the service's namespace
    port: int | None = Field(default=None, ge=1, le=65535)
    labels: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    readiness: str | None = None  # an HTTP path such as /v2/health/ready
    restart: Restart | None = None
    mtls: Literal["STRICT", "PERMISSIVE", "DISABLE"] | None = None


class _ServiceSchema(_Strict):
    namespace: str = "default"  # Kubernetes' default namespace
    protocol: Literal["http", "tcp"] = "http"
    workloads: list[_WorkloadSchema] = Field(min_length=1)


class _MeshSchema(_Strict):
    trust_domain: str = "cluster.local"  # Istio's default trust domain
    state_dir: str = ".meshlet"  # relative to mesh.yaml's directory
    mtls: Literal["STRICT", "PERMISSIVE", "DISABLE"] = "STRICT"  # secure by default
    policies: list[str] = Field(default_factory=list)
    routing: list[str] = Field(default_factory=list)
    audit: bool = True  # write every sidecar's audit log under state_dir/audit
    # Static bootstraps by default: nothing more to run, and audit logs work; the
    # control plane adds live config pushes (docs/mesh.md, "Control-plane mode").
    control_plane: bool = False
    services: dict[str, _ServiceSchema] = Field(default_factory=dict)
    clients: dict[str, _WorkloadSchema] = Field(default_factory=dict)


# ---------------------------------------------------------------- conversion


class _Checker:
    """Cross-field checks pydantic cannot express, collecting every problem."""

    def __init__(self, doc: Document, base: Path) -> None:
        self.doc = doc
        self.base = base
        self.problems: list[str] = []
        self.names: dict[str, tuple[str | int, ...]] = {}
        self.ports: dict[int, tuple[str | int, ...]] = {}

    def problem(self, path: tuple[str | int, ...], message: str) -> None:
        self.problems.append(self.doc.problem(path, message))

    def label(self, path: tuple[str | int, ...], value: str, what: str) -> None:
        if not _DNS_LABEL.match(value) or len(value) > 63:
            self.problem(path, f"{what} {value!r} must be a DNS label (a-z, 0-9, '-')")

    def unique_name(self, path: tuple[str | int, ...], name: str) -> None:
        if name in self.names:
            first = self.doc.where(self.names[name])
            self.problem(path, f"workload name {name!r} is already used at {first}")
        else:
            self.names[name] = path

    def port(self, path: tuple[str | int, ...], port: int | None, replicas: int) -> None:
        if port is None:
            return
        if replicas > 1:
            self.problem(
                path,
                "a fixed port allows one replica; leave 'port' out to "
                "let meshlet pick a port per replica",
            )
        if port in self.ports:
            self.problem(path, f"port {port} is already used at {self.doc.where(self.ports[port])}")
        self.ports[port] = path

    def command(self, path: tuple[str | int, ...], raw: list[str] | str) -> tuple[str, ...]:
        try:
            argv = tuple(shlex.split(raw) if isinstance(raw, str) else raw)
        except ValueError as exc:
            self.problem(path, f"cannot split the command: {exc}")
            return ()
        if not argv or not argv[0]:
            self.problem(path, "the command is empty")
        for arg in argv:
            for name in _PLACEHOLDER.findall(arg):
                if name not in PLACEHOLDERS:
                    self.problem(
                        path,
                        f"unknown placeholder {{{name}}} (known: "
                        f"{', '.join(sorted(PLACEHOLDERS))})",
                    )
        return argv

    def files(self, key: str, raw: list[str]) -> tuple[Path, ...]:
        out = []
        for i, text in enumerate(raw):
            p = Path(text).expanduser()
            p = p if p.is_absolute() else self.base / p
            if not p.exists():
                self.problem((key, i), f"no such file or directory: {text}")
            out.append(p)
        return tuple(out)


def _workload(
    check: _Checker,
    path: tuple[str | int, ...],
    schema: _WorkloadSchema,
    *,
    default_name: str | None,
    service: str | None,
    namespace: str,
    mtls: str,
) -> MeshWorkload:
    name = schema.name or default_name
    if name is None:
        check.problem(path, "'name' is required when a service has several workloads")
        name = f"unnamed-{len(check.names)}"
    check.label((*path, "name") if schema.name else path, name, "workload name")
    check.unique_name(path, name)
    ns = schema.namespace or namespace
    check.label((*path, "namespace") if schema.namespace else path, ns, "namespace")
    sa = schema.service_account or service or name
    check.label(
        (*path, "service_account") if schema.service_account else path, sa, "service account"
    )
    check.port((*path, "port"), schema.port, schema.replicas)
    if schema.readiness is not None and not schema.readiness.startswith("/"):
        check.problem(
            (*path, "readiness"), f"must be a path starting with '/', got {schema.readiness!r}"
        )
    if service is None and schema.port is not None:
        check.problem((*path, "port"), "a client-only workload has no inbound port")
    return MeshWorkload(
        name=name,
        service=service,
        namespace=ns,
        service_account=sa,
        command=check.command((*path, "command"), schema.command),
        replicas=schema.replicas,
        port=schema.port,
        labels=tuple(sorted(schema.labels.items())),
        env=tuple(sorted(schema.env.items())),
        readiness_path=schema.readiness,
        restart=schema.restart or ("always" if service is not None else "on-failure"),
        mtls=schema.mtls or mtls,  # type: ignore[arg-type]  # both are the same Literal
    )


def parse_mesh(doc: Document) -> MeshConfig:
    """Validate one mesh.yaml document and convert it; all problems at once."""
    if not isinstance(doc.data, dict):
        raise ConfigError(doc.problem((), "mesh.yaml must be a mapping"))
    schema = validate_document(_MeshSchema, doc)
    source = Path(doc.file).absolute()  # processes run in other directories
    base = source.parent if not doc.file.startswith("<") else Path.cwd()
    check = _Checker(doc, base)
    if not _TRUST_DOMAIN.match(schema.trust_domain):
        check.problem(("trust_domain",), "must be lowercase letters, digits, '.', '-' or '_'")
    if not schema.services and not schema.clients:
        check.problem((), "no services and no clients: nothing to run")
    services = []
    for sname, svc in schema.services.items():
        spath: tuple[str | int, ...] = ("services", sname)
        check.label(spath, sname, "service name")
        check.label((*spath, "namespace"), svc.namespace, "namespace")
        single = len(svc.workloads) == 1
        workloads = tuple(
            _workload(
                check,
                (*spath, "workloads", i),
                w,
                default_name=sname if single else None,
                service=sname,
                namespace=svc.namespace,
                mtls=schema.mtls,
            )
            for i, w in enumerate(svc.workloads)
        )
        services.append(
            MeshService(
                name=sname, namespace=svc.namespace, protocol=svc.protocol, workloads=workloads
            )
        )
    clients = tuple(
        _workload(
            check,
            ("clients", cname),
            c,
            default_name=cname,
            service=None,
            namespace="default",
            mtls=schema.mtls,
        )
        for cname, c in schema.clients.items()
    )
    for cname in schema.clients:
        if cname in schema.services:
            check.problem(("clients", cname), f"{cname!r} is also a service name")
    state_dir = Path(schema.state_dir).expanduser()
    config = MeshConfig(
        trust_domain=schema.trust_domain,
        state_dir=state_dir if state_dir.is_absolute() else base / state_dir,
        services=tuple(services),
        clients=clients,
        policies=check.files("policies", schema.policies),
        routing=check.files("routing", schema.routing),
        audit=schema.audit,
        control_plane=schema.control_plane,
        source=source,
    )
    if check.problems:
        raise ConfigError(check.problems)
    return config


def load_mesh(path: str | Path) -> MeshConfig:
    """Read and check a mesh.yaml; raise ConfigError with one file:line line per problem."""
    documents = load_file(path)
    if len(documents) != 1:
        raise ConfigError(f"{path}: mesh.yaml holds exactly one YAML document")
    return parse_mesh(documents[0])
