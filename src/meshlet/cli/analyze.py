"""``meshlet analyze PATH...``: check meshlet, Istio and Gateway API YAML.

Every file is read, every document is routed to its loader (security, routing,
mesh.yaml) and every problem is printed as ``file:line: ...``; then the static
security checks of ``meshlet.policy.analysis`` run. Exit status: 0 clean (or
warnings only), 1 when there are errors (or warnings with ``--strict``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="validate meshlet / Istio / Gateway API YAML and report problems with file:line",
        description="Validate configuration files and directories; exit 1 on errors.",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or directories")
    parser.add_argument(
        "--root-namespace",
        default="istio-system",
        help="Istio's mesh-wide namespace (default: istio-system)",
    )
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors")
    parser.set_defaults(handler=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from meshlet.config.istio_common import parse_resource
    from meshlet.config.istio_security import is_security_resource, load_security_resources
    from meshlet.config.source import Document, iter_yaml_files, load_file
    from meshlet.errors import ConfigError
    from meshlet.policy.analysis import analyze_security
    from meshlet.policy.scope import Workload

    problems: list[str] = []
    documents: list[Document] = []
    queue = list(iter_yaml_files(args.paths))
    seen: set[Path] = set()
    workloads: list[Workload] | None = None
    while queue:
        file = queue.pop(0)
        if file.resolve() in seen:
            continue
        seen.add(file.resolve())
        try:
            docs = load_file(file)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        for doc in docs:
            if _is_mesh_yaml(doc):
                mesh_workloads, referenced = _mesh(doc, problems)
            elif _is_bootstrap(doc):
                mesh_workloads, referenced = _bootstrap(doc, problems)
            else:
                documents.append(doc)
                continue
            workloads = [*(workloads or []), *mesh_workloads]
            queue.extend(iter_yaml_files(referenced))

    security_docs: list[Any] = []
    other_docs: list[Any] = []
    for doc in documents:
        try:
            resource = parse_resource(doc)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        (security_docs if is_security_resource(resource) else other_docs).append(resource)

    config = _load_security_each(security_docs, problems, load_security_resources)
    problems.extend(_routing_problems(other_docs))
    findings = analyze_security(config, workloads, root_namespace=args.root_namespace)

    for line in problems:
        print(line if ": error:" in line else _as_error(line))
    for finding in findings:
        print(finding)
    errors = len(problems) + sum(f.severity == "error" for f in findings)
    warnings = sum(f.severity == "warning" for f in findings)
    files = len(seen)
    print(
        f"{files} file(s), {len(documents)} document(s): {errors} error(s), {warnings} warning(s)"
    )
    return 1 if errors or (args.strict and warnings) else 0


def _as_error(line: str) -> str:
    """``file:line: message`` -> ``file:line: error: message``."""
    first, sep, rest = line.partition(": ")
    return f"{first}: error: {rest}" if sep else f"error: {line}"


def _is_mesh_yaml(doc: Any) -> bool:
    data = doc.data
    return (
        isinstance(data, dict)
        and "kind" not in data
        and "apiVersion" not in data
        and bool({"services", "clients", "trust_domain"} & set(data))
    )


def _is_bootstrap(doc: Any) -> bool:
    data = doc.data
    return isinstance(data, dict) and "kind" not in data and "identity" in data


def _bootstrap(doc: Any, problems: list[str]) -> tuple[list[Any], list[Path]]:
    """A sidecar bootstrap: checked, and its workload (when its namespace is
    written down) and referenced policy / routing files join the analysis."""
    from meshlet.config.bootstrap import parse_bootstrap
    from meshlet.errors import ConfigError
    from meshlet.policy.scope import Workload

    try:
        boot = parse_bootstrap(doc)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return [], []
    w = boot.workload
    workloads = (
        [
            Workload(
                namespace=w.namespace,
                labels=dict(w.labels),
                service_account=w.service_account or "default",
            )
        ]
        if w.namespace
        else []
    )
    files = [
        *(boot.inbound.policies if boot.inbound else ()),
        *(boot.outbound.routing if boot.outbound else ()),
    ]
    return workloads, files


def _mesh(doc: Any, problems: list[str]) -> tuple[list[Any], list[Path]]:
    from meshlet.config.mesh import parse_mesh
    from meshlet.errors import ConfigError
    from meshlet.policy.scope import Workload

    try:
        mesh = parse_mesh(doc)
    except ConfigError as exc:
        problems.extend(exc.problems)
        return [], []
    workloads = [
        Workload(namespace=w.namespace, labels=dict(w.labels), service_account=w.service_account)
        for w in mesh.workloads
    ]
    return workloads, [*mesh.policies, *mesh.routing]


def _load_security_each(resources: list[Any], problems: list[str], load: Any) -> Any:
    """Load resources one at a time so one bad policy does not hide the checks
    of the good ones."""
    from meshlet.config.istio_security import SecurityConfig
    from meshlet.errors import ConfigError

    parts = []
    for resource in resources:
        try:
            parts.append(load([resource]))
        except ConfigError as exc:
            problems.extend(exc.problems)
    try:
        load(resources)  # cross-resource checks (duplicates)
    except ConfigError as exc:
        problems.extend(p for p in exc.problems if "duplicate resource" in p)
    return SecurityConfig(
        peer_authentications=tuple(x for c in parts for x in c.peer_authentications),
        authorization_policies=tuple(x for c in parts for x in c.authorization_policies),
        request_authentications=tuple(x for c in parts for x in c.request_authentications),
        providers=tuple(x for c in parts for x in c.providers),
    )


def _routing_problems(resources: list[Any]) -> list[str]:
    """Hand networking / Gateway API documents to the traffic loader."""
    if not resources:
        return []
    from meshlet.errors import ConfigError

    try:
        from meshlet.traffic.loader import build_routing
    except ImportError:  # pragma: no cover - routing not in this build
        return [r.problem(("kind",), f"unsupported kind {r.kind!r}") for r in resources]
    try:
        build_routing([r.document for r in resources])
    except ConfigError as exc:
        return list(exc.problems)
    return []
