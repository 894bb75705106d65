"""mesh.yaml: strict schema, defaults, and every problem reported with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlet.config.mesh import load_mesh, parse_mesh
from meshlet.config.source import parse_yaml
from meshlet.errors import ConfigError

GOOD = """\
trust_domain: example.org
services:
  inference:
    namespace: ml
    workloads:
      - name: inference-v1
        command: python -m meshlet.workloads.inference --port {port} --model-version v1
        replicas: 2
        service_account: inference
        labels: {app: inference, version: v1}
        readiness: /v2/health/ready
      - name: inference-v2
        command: ["{python}", "-m", "meshlet.workloads.inference", "--port", "{port}"]
        labels: {app: inference, version: v2}
clients:
  frontend:
    namespace: web
    command: ["{python}", "-c", "print('hi')"]
"""


def _parse(text: str, file: str = "/m/mesh.yaml"):  # type: ignore[no-untyped-def]
    return parse_mesh(parse_yaml(text, file)[0])


def test_good_mesh_with_defaults() -> None:
    mesh = _parse(GOOD)
    assert mesh.trust_domain == "example.org"
    assert mesh.state_dir == Path("/m/.meshlet")
    assert mesh.control_plane is False
    v1, v2, frontend = mesh.workloads
    assert v1.command[:3] == ("python", "-m", "meshlet.workloads.inference")
    assert v1.replicas == 2
    assert v1.port is None
    assert v1.spiffe_id(mesh.trust_domain) == "spiffe://example.org/ns/ml/sa/inference"
    assert v2.service_account == "inference"  # defaults to the service name
    assert v2.restart == "always"
    assert v2.mtls == "STRICT"
    assert frontend.service is None
    assert frontend.restart == "on-failure"
    assert frontend.spiffe_id("example.org") == "spiffe://example.org/ns/web/sa/frontend"
    assert dict(v1.labels) == {"app": "inference", "version": "v1"}


def test_schema_errors_point_at_lines() -> None:
    text = GOOD.replace("replicas: 2", "replicas: two").replace(
        "namespace: web", "namespace: web\n    colour: blue"
    )
    with pytest.raises(ConfigError) as info:
        _parse(text)
    lines = info.value.problems
    assert any(
        p.startswith("/m/mesh.yaml:8: services.inference.workloads[0].replicas") for p in lines
    )
    assert any("/m/mesh.yaml:18: clients.frontend.colour: unknown field" in p for p in lines)


def test_cross_checks_report_every_problem_at_once(tmp_path: Path) -> None:
    text = """\
trust_domain: Bad_Domain!
policies: [missing.yaml]
services:
  inference:
    workloads:
      - command: a {nope}
        port: 8080
        replicas: 2
      - name: Inference
        command: ""
        port: 8080
clients:
  inference:
    command: x
"""
    with pytest.raises(ConfigError) as info:
        _parse(text, str(tmp_path / "mesh.yaml"))
    joined = "\n".join(info.value.problems)
    for needle in (
        "mesh.yaml:1: trust_domain: must be lowercase",
        "mesh.yaml:2: policies[0]: no such file or directory: missing.yaml",
        "'name' is required when a service has several workloads",
        "unknown placeholder {nope}",
        "a fixed port allows one replica",
        "port 8080 is already used at",
        "workload name 'Inference' must be a DNS label",
        "the command is empty",
        "'inference' is also a service name",
    ):
        assert needle in joined, needle
    assert all(p.startswith(str(tmp_path / "mesh.yaml") + ":") for p in info.value.problems)


def test_policy_files_resolve_against_mesh_dir(tmp_path: Path) -> None:
    (tmp_path / "authz.yaml").write_text("{}\n")
    (tmp_path / "mesh.yaml").write_text(
        "policies: [authz.yaml]\nstate_dir: /tmp/x\nclients:\n  c:\n    command: [true]\n"
    )
    with pytest.raises(ConfigError, match="command"):  # [true] is a bool, strictly refused
        load_mesh(tmp_path / "mesh.yaml")
    (tmp_path / "mesh.yaml").write_text(
        "policies: [authz.yaml]\nstate_dir: /tmp/x\nclients:\n  c:\n    command: ['true']\n"
    )
    mesh = load_mesh(tmp_path / "mesh.yaml")
    assert mesh.policies == (tmp_path / "authz.yaml",)
    assert mesh.state_dir == Path("/tmp/x")


def test_empty_mesh_is_refused() -> None:
    with pytest.raises(ConfigError, match="nothing to run"):
        _parse("trust_domain: a.b\n")
