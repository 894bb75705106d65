"""The control plane's config source: a directory of YAML, validated as a whole.

The directory holds ``mesh.yaml`` (services, workloads, trust domain: the same
file ``meshlet up`` reads, so a mesh grows from one machine to many without a
new format) and any number of Istio ``security.istio.io`` /
``networking.istio.io`` and Gateway API documents, plus the files ``mesh.yaml``
names under ``policies`` and ``routing``. Hidden files and directories (such as
``meshlet up``'s ``.meshlet`` state directory) are skipped.

A change is all or nothing: ``load_config_dir`` either returns a complete,
checked ``MeshSource`` or raises ConfigError with every problem as
``file:line: path: message``; the checks are the loaders' plus the errors of
``meshlet analyze`` (conflicting PeerAuthentications, undeclared CUSTOM
providers), whose warnings ride along in ``MeshSource.warnings``.
``ConfigStore`` keeps the last good source serving when a new one is refused,
and remembers why it was refused.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from meshlet.config.istio_common import Resource, parse_resource
from meshlet.config.istio_security import (
    SecurityConfig,
    is_security_resource,
    load_security_resources,
)
from meshlet.config.mesh import MeshConfig, parse_mesh
from meshlet.config.source import Document, load_file
from meshlet.errors import ConfigError
from meshlet.policy.analysis import Finding, analyze_security
from meshlet.policy.scope import DEFAULT_ROOT_NAMESPACE, Workload
from meshlet.traffic.loader import ROUTING_KINDS, RoutingConfig, build_routing

__all__ = ["MESH_FILE", "ConfigStore", "MeshSource", "dir_signature", "load_config_dir"]

MESH_FILE = "mesh.yaml"
_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshSource:
    """One complete, validated configuration. ``digest`` names it in logs and status."""

    mesh: MeshConfig
    security: SecurityConfig
    security_resources: tuple[Resource, ...]
    routing: RoutingConfig
    routing_documents: tuple[Document, ...]
    files: tuple[Path, ...]
    digest: str
    warnings: tuple[str, ...] = ()  # ``meshlet analyze`` warnings: logged, not fatal


def _yaml_files(directory: Path) -> list[Path]:
    """Every YAML file under ``directory`` except hidden ones, in sorted order."""
    found: list[Path] = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(
            Path(root) / n for n in names if n.endswith(_YAML_SUFFIXES) and not n.startswith(".")
        )
    return sorted(found)


def dir_signature(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of every YAML file: cheap enough to poll each second,
    and a rename-over (how editors and ``kubectl cp`` save) changes it too."""
    sig: list[tuple[str, int, int]] = []
    for path in _yaml_files(directory):
        try:
            st = path.stat()
        except OSError:
            continue
        sig.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(sig)


def _classify(
    documents: list[Document], problems: list[str]
) -> tuple[list[Resource], list[Document]]:
    security: list[Resource] = []
    routing: list[Document] = []
    for doc in documents:
        kind = doc.data.get("kind") if isinstance(doc.data, dict) else None
        if kind in ROUTING_KINDS:
            routing.append(doc)
            continue
        try:
            resource = parse_resource(doc)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if is_security_resource(resource):
            security.append(resource)
        else:
            problems.append(
                doc.problem(("kind",), f"{resource.kind!r} is not a kind the control plane serves")
            )
    return security, routing


def load_config_dir(directory: Path) -> MeshSource:
    """Read and check the whole directory; raise ConfigError listing every problem."""
    mesh_path = directory / MESH_FILE
    if not mesh_path.is_file():
        raise ConfigError(f"{mesh_path}: no such file (the config directory needs a mesh.yaml)")
    problems: list[str] = []
    mesh_docs = load_file(mesh_path)
    if len(mesh_docs) != 1:
        raise ConfigError(f"{mesh_path}: mesh.yaml holds exactly one YAML document")
    mesh = parse_mesh(mesh_docs[0])  # nothing else can be checked without it
    files: dict[Path, None] = {}
    for path in (*_yaml_files(directory), *mesh.policies, *mesh.routing):
        for file in _yaml_files(path) if path.is_dir() else [path]:
            if file.resolve() != mesh_path.resolve():
                files.setdefault(file.resolve(), None)
    documents: list[Document] = []
    digest = hashlib.sha256(mesh_path.read_bytes())
    for file in files:
        try:
            documents.extend(load_file(file))
            digest.update(str(file).encode() + b"\0" + file.read_bytes())
        except (ConfigError, OSError) as exc:
            problems.extend(exc.problems if isinstance(exc, ConfigError) else [f"{file}: {exc}"])
    security_resources, routing_documents = _classify(documents, problems)
    security = SecurityConfig(
        peer_authentications=(),
        authorization_policies=(),
        request_authentications=(),
        providers=(),
    )
    routing = RoutingConfig()
    try:
        security = load_security_resources(security_resources)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        routing = build_routing(routing_documents)
    except ConfigError as exc:
        problems.extend(exc.problems)
    findings = [] if problems else _analyze(mesh, security)
    problems.extend(str(f) for f in findings if f.severity == "error")
    if problems:
        raise ConfigError(problems)
    return MeshSource(
        mesh=mesh,
        security=security,
        security_resources=tuple(security_resources),
        routing=routing,
        routing_documents=tuple(routing_documents),
        files=(mesh_path, *files),
        digest=digest.hexdigest()[:12],
        warnings=tuple(str(f) for f in findings if f.severity != "error"),
    )


def _analyze(mesh: MeshConfig, security: SecurityConfig) -> list[Finding]:
    """The same checks as ``meshlet analyze`` against mesh.yaml's workloads:
    its errors refuse the change, its warnings are reported."""
    workloads = [
        Workload(namespace=w.namespace, labels=dict(w.labels), service_account=w.service_account)
        for w in mesh.workloads
    ]
    return analyze_security(security, workloads, root_namespace=DEFAULT_ROOT_NAMESPACE)


class ConfigStore:
    """The config that is serving, and the last refused change with its reason."""

    __slots__ = ("current", "generation", "refused")

    def __init__(self, initial: MeshSource) -> None:
        self.current = initial
        self.generation = 1  # bumped on every accepted change
        self.refused: tuple[str, ...] = ()  # problems of the last refused change

    def offer(self, candidate: MeshSource | ConfigError) -> bool:
        """Take a freshly loaded source, or the error loading it raised. Return True
        when the serving config changed; a refusal keeps the old one serving."""
        if isinstance(candidate, ConfigError):
            self.refused = tuple(candidate.problems)
            return False
        self.refused = ()
        if candidate.digest == self.current.digest:
            return False
        self.current = candidate
        self.generation += 1
        return True
