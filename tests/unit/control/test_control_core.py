"""The control plane's pure core: config dir validation, registry, snapshots."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from meshlet.clock import ManualClock
from meshlet.control.registry import Registry
from meshlet.control.snapshot import compile_snapshot
from meshlet.control.store import ConfigStore, load_config_dir
from meshlet.errors import ConfigError

MESH = """\
trust_domain: example.org
services:
  inference:
    workloads:
      - name: inference-v1
        command: ["true"]
        labels: {app: inference, version: v1}
      - name: inference-v2
        command: ["true"]
        labels: {app: inference, version: v2}
clients:
  frontend:
    command: ["true"]
    labels: {app: frontend}
"""

AUTHZ = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-frontend, namespace: default}
spec:
  selector: {matchLabels: {app: inference}}
  action: ALLOW
  rules:
    - from: [{source: {principals: ["example.org/ns/default/sa/frontend"]}}]
"""

PEER = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: permissive-v2, namespace: default}
spec:
  selector: {matchLabels: {version: v2}}
  mtls: {mode: PERMISSIVE}
"""

VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inference, namespace: default}
spec:
  hosts: [inference]
  http:
    - route:
        - destination: {host: inference}
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    write(tmp_path, "mesh.yaml", MESH)
    write(tmp_path, "authz.yaml", AUTHZ)
    write(tmp_path, "peer.yaml", PEER)
    write(tmp_path, "routes.yaml", VS)
    hidden = tmp_path / ".meshlet"
    hidden.mkdir()
    write(hidden, "junk.yaml", "kind: NotAThing\n")  # state dirs are never read
    return tmp_path


def register(registry: Registry, proxy_id: str, workload: str, address: str | None) -> bool:
    return registry.heartbeat(
        proxy_id=proxy_id,
        workload=workload,
        spiffe_id=f"spiffe://example.org/ns/default/sa/{workload}",
        address=address,
        cert_not_after=2_000_000_000.0,
        now_s=1000.0,
    )


def test_config_dir_loads_every_kind(config_dir: Path) -> None:
    source = load_config_dir(config_dir)
    assert source.mesh.trust_domain == "example.org"
    assert [p.name for p in source.security.authorization_policies] == ["only-frontend"]
    assert "inference" in source.routing.hosts
    assert len(source.digest) == 12


def test_invalid_change_lists_every_problem_with_file_and_line(config_dir: Path) -> None:
    write(config_dir, "bad.yaml", AUTHZ.replace("ALLOW", "PERMIT").replace("only-", "x-"))
    write(config_dir, "odd.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(ConfigError) as caught:
        load_config_dir(config_dir)
    problems = caught.value.problems
    assert any(p.startswith(f"{config_dir / 'bad.yaml'}:") and "action" in p for p in problems)
    assert any("odd.yaml:2: kind:" in p and "ConfigMap" in p for p in problems)


def refused(store: ConfigStore) -> tuple[str, ...]:
    return store.refused  # a call, so mypy does not keep an earlier narrowing


def test_store_keeps_last_good_config_and_reports_refusal(config_dir: Path) -> None:
    store = ConfigStore(load_config_dir(config_dir))
    first = store.current
    assert not store.offer(load_config_dir(config_dir))  # same digest: no change
    assert not store.offer(ConfigError(["x.yaml:3: spec: wrong"]))
    assert store.current is first
    assert store.refused == ("x.yaml:3: spec: wrong",)
    write(config_dir, "routes.yaml", VS.replace("name: inference,", "name: inference2,"))
    assert store.offer(load_config_dir(config_dir))
    assert store.current is not first
    assert refused(store) == ()  # an accepted change clears the last refusal
    assert store.generation == 2


def test_registry_leases_certificates_and_acks() -> None:
    clock = ManualClock()
    registry = Registry(lease_s=10.0)
    assert registry.heartbeat(
        proxy_id="a",
        workload="inference-v1",
        spiffe_id="spiffe://example.org/ns/default/sa/inference-v1",
        address="127.0.0.1:1",
        cert_not_after=clock.wall() + 100,
        now_s=clock.monotonic(),
    )
    generation = registry.generation
    # A refresh with the same endpoint is not a change.
    assert not registry.heartbeat(
        proxy_id="a",
        workload="inference-v1",
        spiffe_id="spiffe://example.org/ns/default/sa/inference-v1",
        address="127.0.0.1:1",
        cert_not_after=clock.wall() + 100,
        now_s=clock.monotonic(),
    )
    assert registry.generation == generation
    registry.sent("a", "v1")
    registry.nack("a", "v1", "inbound.policies: not supported")
    registry.ack("a", "v0")
    record = registry.get("a")
    assert record is not None
    assert (record.sent, record.acked) == ("v1", "v0")
    assert record.nack is not None
    assert record.nack.reason == "inbound.policies: not supported"
    assert not registry.ack("nobody", "v1")
    clock.advance(9.0)
    assert registry.expire(now_s=clock.monotonic(), wall_s=clock.wall()) == ()
    clock.advance(2.0)
    gone = registry.expire(now_s=clock.monotonic(), wall_s=clock.wall())
    assert [g.proxy_id for g in gone] == ["a"]
    assert len(registry) == 0
    assert registry.generation == generation + 1


def test_registry_drops_a_proxy_whose_certificate_lapsed() -> None:
    registry = Registry(lease_s=1e9)
    registry.heartbeat(
        proxy_id="a",
        workload="w",
        spiffe_id="spiffe://x/ns/d/sa/w",
        address=None,
        cert_not_after=500.0,
        now_s=0.0,
    )
    assert registry.expire(now_s=1.0, wall_s=499.0) == ()
    assert [r.proxy_id for r in registry.expire(now_s=1.0, wall_s=500.0)] == ["a"]
    assert registry.leave("a") is False


def test_snapshot_holds_only_what_the_workload_needs(config_dir: Path) -> None:
    source = load_config_dir(config_dir)
    registry = Registry()
    register(registry, "p1", "inference-v1", "127.0.0.1:9001")
    register(registry, "p2", "inference-v2", "127.0.0.1:9002")
    register(registry, "p3", "frontend", None)

    front = compile_snapshot(source, registry, "frontend")
    assert front is not None
    assert front.inbound is None  # client-only: nothing listens
    assert front.policies == ()  # the AuthorizationPolicy selects app=inference only
    (svc,) = front.services
    assert svc.name == "inference"
    assert [(e.address, e.identity) for e in svc.endpoints] == [
        ("127.0.0.1:9001", "spiffe://example.org/ns/default/sa/inference-v1"),
        ("127.0.0.1:9002", "spiffe://example.org/ns/default/sa/inference-v2"),
    ]
    wire = front.to_wire()
    assert wire["bootstrap"]["outbound"]["services"]["inference"]["endpoints"][1]["labels"] == {
        "app": "inference",
        "version": "v2",
    }
    assert wire["routing"][0]["kind"] == "VirtualService"

    v1 = compile_snapshot(source, registry, "inference-v1")
    v2 = compile_snapshot(source, registry, "inference-v2")
    assert v1 is not None
    assert v2 is not None
    assert v1.inbound is not None
    assert v2.inbound is not None
    assert (v1.inbound.mtls, v1.inbound.mtls_source) == ("STRICT", "mesh.yaml")
    assert (v2.inbound.mtls, v2.inbound.mtls_source) == (
        "PERMISSIVE",
        "PeerAuthentication default/permissive-v2",
    )
    assert [d["metadata"]["name"] for d in v1.policies] == ["only-frontend"]
    assert [d["metadata"]["name"] for d in v2.policies] == ["only-frontend", "permissive-v2"]
    assert compile_snapshot(source, registry, "nobody") is None


def test_snapshot_version_is_a_content_digest(config_dir: Path) -> None:
    source = load_config_dir(config_dir)
    registry = Registry()
    register(registry, "p1", "inference-v1", "127.0.0.1:9001")
    a = compile_snapshot(source, registry, "frontend")
    b = compile_snapshot(load_config_dir(config_dir), registry, "frontend")
    assert a is not None
    assert b is not None
    assert a.version == b.version  # a restarted control plane agrees
    register(registry, "p2", "inference-v2", "127.0.0.1:9002")
    c = compile_snapshot(source, registry, "frontend")
    assert c is not None
    assert c.version != a.version
    registry.leave("p2")
    d = compile_snapshot(source, registry, "frontend")
    assert d is not None
    assert d.version == a.version
    assert b"127.0.0.1:9001" in d.to_json()


def test_analyze_errors_refuse_and_warnings_ride_along(config_dir: Path) -> None:
    # A selector that matches no workload in mesh.yaml: loads, with a warning.
    write(config_dir, "stray.yaml", AUTHZ.replace("only-frontend", "stray").replace(
        "app: inference", "app: nothing"
    ))  # fmt: skip
    source = load_config_dir(config_dir)
    assert any("stray" in w for w in source.warnings)
    # Two namespace-wide PeerAuthentications in one namespace: an analyze error.
    for name in ("one", "two"):
        write(
            config_dir,
            f"peer-{name}.yaml",
            PEER.replace("permissive-v2", name).replace(
                "  selector: {matchLabels: {version: v2}}\n", ""
            ),
        )
    with pytest.raises(ConfigError) as caught:
        load_config_dir(config_dir)
    assert any("error" in p and "PeerAuthentication" in p for p in caught.value.problems)
