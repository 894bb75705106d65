"""Pure parts of the control-plane gaps: TCP services in snapshots, the sidecar's
merge of them (local listen address), and the control plane's audit records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from meshlet.clock import ManualClock
from meshlet.config.bootstrap import Address, IdentityFiles
from meshlet.control.auditing import ControlAudit, files_digest
from meshlet.control.registry import Registry
from meshlet.control.snapshot import compile_snapshot
from meshlet.control.store import MeshSource, load_config_dir
from meshlet.proxy.dynamic_config import DynamicSettings, snapshot_config, split_tcp
from meshlet.telemetry.audit import AuditLog, verify

TD = "example.org"
MESH = {
    "trust_domain": TD,
    "services": {
        "web": {"workloads": [{"command": ["true"], "port": 8080}]},
        "db": {"protocol": "tcp", "workloads": [{"command": ["true"], "port": 5432}]},
        "cache": {"protocol": "tcp", "workloads": [{"command": ["true"], "port": 6379}]},
    },
    "clients": {"frontend": {"command": ["true"]}},
}


def source(tmp_path: Path) -> MeshSource:
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump(MESH))
    return load_config_dir(tmp_path)


def registry(*workloads: str) -> Registry:
    reg = Registry(lease_s=45.0)
    for i, name in enumerate(workloads):
        reg.heartbeat(
            proxy_id=f"{name}-{i}",
            workload=name,
            spiffe_id=f"spiffe://{TD}/ns/default/sa/{name}",
            address=f"10.0.0.{i + 1}:15006",
            cert_not_after=1e10,
            now_s=0.0,
        )
    return reg


def test_tcp_services_with_endpoints_are_in_the_snapshot(tmp_path: Path) -> None:
    snap = compile_snapshot(source(tmp_path), registry("web", "db"), "frontend")
    assert snap is not None
    services = snap.to_wire()["bootstrap"]["outbound"]["services"]
    assert services["db"] == {
        "protocol": "tcp",
        "endpoints": [
            {
                "address": "10.0.0.2:15006",
                "identity": f"spiffe://{TD}/ns/default/sa/db",
                "labels": {},
            }
        ],
    }
    assert services["web"]["protocol"] == "http"
    assert "cache" not in services  # no endpoint registered: no listener for it
    assert "listen" not in services["db"]  # where the app connects is the caller's business


def test_a_tcp_service_changes_the_version(tmp_path: Path) -> None:
    src = source(tmp_path)
    without = compile_snapshot(src, registry("web"), "frontend")
    with_db = compile_snapshot(src, registry("web", "db"), "frontend")
    assert without is not None
    assert with_db is not None
    assert without.version != with_db.version


def settings(tmp_path: Path, tcp: tuple[tuple[str, Address], ...] = ()) -> DynamicSettings:
    return DynamicSettings(
        control="https://127.0.0.1:15012",
        workload="frontend",
        token=None,
        state_dir=tmp_path,
        bundle=None,
        inbound=Address(host="127.0.0.1", port=15006),
        outbound=Address(host="127.0.0.2", port=15001),
        app=None,
        admin=None,
        tcp=tcp,
    )


@pytest.mark.parametrize(
    ("pinned", "expected"),
    [
        pytest.param((), "127.0.0.2:0", id="default-port-0-on-outbound-host"),
        pytest.param(
            (("db", Address(host="127.0.0.1", port=25432)),), "127.0.0.1:25432", id="pinned"
        ),
    ],
)
def test_merge_gives_tcp_services_a_local_listen_address(
    tmp_path: Path, pinned: tuple[tuple[str, Address], ...], expected: str
) -> None:
    snap = compile_snapshot(source(tmp_path), registry("web", "db"), "frontend")
    assert snap is not None
    files = IdentityFiles(cert=tmp_path / "c", key=tmp_path / "k", bundle=tmp_path / "b")
    config = snapshot_config(json.loads(snap.to_json()), settings(tmp_path, pinned), files)
    http, tcp = split_tcp(config)
    assert [s.name for s in tcp] == ["db"]
    assert str(tcp[0].listen) == expected
    assert http.outbound is not None
    assert [s.name for s in http.outbound.services] == ["web"]
    assert http.audit is None  # the dynamic sidecar owns its audit log (dynamic_audit)


def test_split_without_tcp_returns_the_config_itself(tmp_path: Path) -> None:
    snap = compile_snapshot(source(tmp_path), registry("web"), "frontend")
    assert snap is not None
    files = IdentityFiles(cert=tmp_path / "c", key=tmp_path / "k", bundle=tmp_path / "b")
    config = snapshot_config(json.loads(snap.to_json()), settings(tmp_path), files)
    assert split_tcp(config) == (config, ())


def test_files_digest_names_the_directory_content(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text("a: 1\n")
    first = files_digest(tmp_path)
    (tmp_path / ".hidden.yaml").write_text("ignored: true\n")
    assert files_digest(tmp_path) == first  # hidden files are not config
    (tmp_path / "mesh.yaml").write_text("a: 2\n")
    assert files_digest(tmp_path) != first


def test_control_audit_records_chain_and_never_hold_tokens(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", clock=ManualClock())
    audit = ControlAudit(log)
    audit.token_burned(token_id="abc", spiffe_id=f"spiffe://{TD}/ns/a/sa/b", expires_at=1.0)
    audit.svid_issued(
        spiffe_id=f"spiffe://{TD}/ns/a/sa/b", renewal=True, serial="1F", not_after=2.0, peer=None
    )
    audit.config_refused(candidate_digest="c1", serving_digest="s1", problems=["f:1: bad"])
    audit.close()
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["token_burned", "svid_renewed", "config_refused"]
    assert {x["component"] for x in lines} == {"control"}
    assert verify(tmp_path / "audit.jsonl").ok
    ControlAudit(None).token_refused(reason="no log: nothing happens")
