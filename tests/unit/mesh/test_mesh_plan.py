"""Planning a local mesh: ports, identities, commands and sidecar bootstraps."""

from __future__ import annotations

import itertools
from pathlib import Path

import yaml

from meshlet.config.bootstrap import MtlsMode, parse_bootstrap
from meshlet.config.mesh import parse_mesh
from meshlet.config.source import parse_yaml
from meshlet.mesh.plan import Features, bootstrap_for, plan_mesh
from meshlet.mesh.supervisor import Backoff, should_restart

MESH = """\
trust_domain: cluster.local
services:
  inference:
    namespace: ml
    workloads:
      - name: inference-v1
        command: "{python} -m meshlet.workloads.inference --port {port} --instance {name}"
        replicas: 2
        labels: {version: v1}
        env: {PROXY: "{outbound}"}
clients:
  frontend:
    command: ["{python}", "frontend.py"]
"""


def _plan(tmp_path: Path):  # type: ignore[no-untyped-def]
    mesh = parse_mesh(parse_yaml(MESH, str(tmp_path / "mesh.yaml"))[0])
    ports = itertools.count(20000)
    return plan_mesh(mesh, next_port=lambda: next(ports), python="/py")


def test_every_replica_gets_distinct_ports_and_its_identity(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    names = [r.name for r in plan.replicas]
    assert names == ["inference-v1-0", "inference-v1-1", "frontend-0"]
    used = [p for r in plan.replicas for p in (r.app_port, r.inbound_port, r.outbound_port) if p]
    assert len(used) == len(set(used)) == 7
    v1 = plan.replicas[0]
    assert v1.spiffe_id == "spiffe://cluster.local/ns/ml/sa/inference"
    assert v1.argv == (
        "/py",
        "-m",
        "meshlet.workloads.inference",
        "--port",
        str(v1.app_port),
        "--instance",
        "inference-v1-0",
    )
    env = dict(v1.env)
    assert env["HTTP_PROXY"] == f"http://127.0.0.1:{v1.outbound_port}"
    assert env["PROXY"] == env["HTTP_PROXY"]
    assert env["PORT"] == str(v1.app_port)
    assert v1.directory == tmp_path / ".meshlet" / "replicas" / "inference-v1-0"
    frontend = plan.replicas[2]
    assert frontend.app_port is None
    assert frontend.inbound_port is None
    assert frontend.spiffe_id == "spiffe://cluster.local/ns/default/sa/frontend"


def test_bootstraps_pass_the_proxys_own_schema(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    features = Features(policies=False, routing=False)
    v1, _, frontend = plan.replicas
    text = yaml.safe_dump(bootstrap_for(plan, v1, features))
    boot = parse_bootstrap(parse_yaml(text, str(v1.bootstrap_path))[0])
    assert boot.inbound is not None
    assert boot.inbound.mtls is MtlsMode.STRICT
    assert boot.inbound.app.port == v1.app_port
    assert boot.identity.cert == v1.directory / "cert.pem"
    assert boot.outbound is not None
    (svc,) = boot.outbound.services
    assert svc.name == "inference"
    assert [e.address.port for e in svc.endpoints] == [r.inbound_port for r in plan.replicas[:2]]
    assert svc.endpoints[0].labels == (("version", "v1"),)
    assert boot.workload.namespace == "ml"
    assert boot.audit is not None
    client = parse_bootstrap(
        parse_yaml(yaml.safe_dump(bootstrap_for(plan, frontend, features)), "f.yaml")[0]
    )
    assert client.inbound is None


def test_policy_and_routing_keys_only_when_the_build_has_them(tmp_path: Path) -> None:
    (tmp_path / "authz.yaml").write_text("{}\n")
    text = MESH + "policies: [authz.yaml]\nrouting: [authz.yaml]\n"
    mesh = parse_mesh(parse_yaml(text, str(tmp_path / "mesh.yaml"))[0])
    ports = itertools.count(20000)
    plan = plan_mesh(mesh, next_port=lambda: next(ports), python="/py")
    off = bootstrap_for(plan, plan.replicas[0], Features(policies=False, routing=False))
    on = bootstrap_for(plan, plan.replicas[0], Features(policies=True, routing=True))
    assert "policies" not in off["inbound"]
    assert "routing" not in off["outbound"]
    assert on["inbound"]["policies"] == [str(tmp_path / "authz.yaml")]
    assert on["outbound"]["routing"] == [str(tmp_path / "authz.yaml")]


def test_backoff_doubles_caps_and_forgets_after_a_stable_run() -> None:
    b = Backoff(base_s=0.5, cap_s=4.0, stable_s=10.0)
    assert [b.next_delay(0.1) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert b.next_delay(30.0) == 0.5


def test_restart_policies() -> None:
    assert should_restart("always", 0)
    assert should_restart("on-failure", 1)
    assert not should_restart("on-failure", 0)
    assert not should_restart("never", 1)


def test_port_clash_is_recognised_in_either_spelling() -> None:
    from meshlet.mesh.ports import looks_like_port_clash

    assert looks_like_port_clash(
        "OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 1): "
        "address already in use"
    )
    assert looks_like_port_clash("bind: Address already in use")
    assert not looks_like_port_clash("meshlet: error: proxy.yaml:3: inbound.app: bad address")


def test_tcp_services_get_a_local_port_per_replica(tmp_path: Path) -> None:
    text = MESH.replace(
        "clients:",
        "  grpc-echo:\n    protocol: tcp\n    workloads:\n      - command: echo {port}\nclients:",
    )
    mesh = parse_mesh(parse_yaml(text, str(tmp_path / "mesh.yaml"))[0])
    ports = itertools.count(20000)
    plan = plan_mesh(mesh, next_port=lambda: next(ports), python="/py")
    frontend = next(r for r in plan.replicas if r.name == "frontend-0")
    ((svc, port),) = frontend.tcp_ports
    assert svc == "grpc-echo"
    assert dict(frontend.env)["MESHLET_TCP_GRPC_ECHO"] == f"127.0.0.1:{port}"
    boot = parse_bootstrap(
        parse_yaml(
            yaml.safe_dump(bootstrap_for(plan, frontend, Features(policies=False, routing=False))),
            "f.yaml",
        )[0]
    )
    assert boot.outbound is not None
    tcp = next(s for s in boot.outbound.services if s.name == "grpc-echo")
    assert tcp.protocol == "tcp"
    assert tcp.listen is not None
    assert tcp.listen.port == port
    echo = next(r for r in plan.replicas if r.name == "grpc-echo-0")
    server = parse_bootstrap(
        parse_yaml(
            yaml.safe_dump(bootstrap_for(plan, echo, Features(policies=False, routing=False))),
            "e.yaml",
        )[0]
    )
    assert server.inbound is not None
    assert server.inbound.protocol == "tcp"
