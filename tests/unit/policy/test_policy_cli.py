"""``meshlet policy explain`` and ``meshlet analyze`` end to end through main()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from policy_cases import docs, policy

from meshlet.cli.main import main

POLICIES = docs(
    policy(
        "deny-admin",
        """
selector: {matchLabels: {app: httpbin}}
action: DENY
rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
""",
    ),
    policy(
        "allow-sleep",
        """
rules:
- from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]
- from: [{source: {namespaces: ["bar"]}}]
  when: [{key: "request.auth.claims[groups]", values: ["ml"]}]
""",
    ),
    policy("audit-post", "action: AUDIT\nrules: [{to: [{operation: {methods: ['POST']}}]}]"),
)


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICIES)
    return path


def explain(capsys: pytest.CaptureFixture[str], policies: Path, *args: str) -> dict[str, object]:
    argv = ["policy", "explain", "--policies", str(policies), "--namespace", "foo",
            "--labels", "app=httpbin,version=v1", "--port", "8000", "--json", *args]  # fmt: skip
    assert main(argv) == 0
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


def test_explain_deny_names_policy_and_rule(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    out = explain(capsys, policies, "--source-principal", "spiffe://cluster.local/ns/foo/sa/sleep",
                  "--path", "/admin/users")  # fmt: skip
    assert (out["decision"], out["policy"], out["rule"], out["audit"]) == (
        "DENY",
        "foo/deny-admin",
        0,
        False,
    )
    assert str(out["source"]).endswith("policies.yaml:1")


def test_explain_allow_with_audit(capsys: pytest.CaptureFixture[str], policies: Path) -> None:
    out = explain(capsys, policies, "--source-principal", "cluster.local/ns/foo/sa/sleep",
                  "--method", "POST")  # fmt: skip
    assert (out["decision"], out["policy"], out["rule"], out["audit"]) == (
        "ALLOW",
        "foo/allow-sleep",
        0,
        True,
    )


def test_explain_jwt_claims_and_source_namespace(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    out = explain(capsys, policies, "--source-namespace", "bar",
                  "--jwt-claims", '{"iss": "i", "sub": "s", "groups": ["ml"]}')  # fmt: skip
    assert (out["decision"], out["policy"], out["rule"]) == ("ALLOW", "foo/allow-sleep", 1)
    out = explain(capsys, policies, "--source-namespace", "bar")
    assert (out["decision"], out["policy"], out["rule"]) == ("DENY", None, None)


def test_explain_text_output(capsys: pytest.CaptureFixture[str], policies: Path) -> None:
    argv = ["policy", "explain", "--policies", str(policies), "--namespace", "foo",
            "--labels", "app=httpbin", "--path", "/admin"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "decision: DENY" in out
    assert "foo/deny-admin rule 0" in out


def test_explain_bad_flag_value_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    argv = ["policy", "explain", "--policies", str(policies), "--namespace", "foo",
            "--labels", "novalue"]  # fmt: skip
    assert main(argv) == 2
    assert "--labels 'novalue': expected KEY=VALUE" in capsys.readouterr().err


def analyze(capsys: pytest.CaptureFixture[str], *paths: Path) -> tuple[int, str]:
    code = main(["analyze", *map(str, paths)])
    return code, capsys.readouterr().out


def test_analyze_clean_policies(capsys: pytest.CaptureFixture[str], policies: Path) -> None:
    code, out = analyze(capsys, policies)
    assert code == 0, out
    assert "0 error(s)" in out


def test_analyze_reports_unknown_fields_with_file_and_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        policy(
            "typo",
            """
action: DENY
rules:
- to: [{operation: {method: ["GET"]}}]
""",
        )
    )
    code, out = analyze(capsys, bad)
    assert code == 1
    assert f"{bad}:7: error: AuthorizationPolicy foo/typo (document 0): " in out
    assert "spec.rules[0].to[0].operation.method: unknown field" in out


def test_analyze_mesh_yaml_knows_workloads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "policies.yaml").write_text(docs(
        policy("for-ratings", "selector: {matchLabels: {app: ratings}}\nrules: [{}]"),
        policy("lockdown", "selector: {matchLabels: {app: httpbin}}"),
    ))  # fmt: skip
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        "policies: [policies.yaml]\n"
        "services:\n"
        "  httpbin:\n"
        "    namespace: foo\n"
        "    workloads:\n"
        "    - command: ['true']\n"
        "      labels: {app: httpbin}\n"
    )
    code, out = analyze(capsys, mesh)
    assert code == 0, out  # warnings only
    assert "warning: AuthorizationPolicy foo/for-ratings: selector app=ratings matches no" in out
    assert "foo/lockdown: workload foo/app=httpbin is unreachable" in out


def test_analyze_conflicting_peer_authentications(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "peers.yaml"
    path.write_text(docs(
        policy("a", "mtls: {mode: STRICT}", kind="PeerAuthentication"),
        policy("b", "mtls: {mode: DISABLE}", kind="PeerAuthentication"),
    ))  # fmt: skip
    code, out = analyze(capsys, path)
    assert code == 1
    assert "error: PeerAuthentications foo/a, foo/b are all namespace-wide" in out


def test_analyze_unknown_custom_provider(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text(policy("ext", "action: CUSTOM\nprovider: {name: opa}\nrules: [{}]"))
    code, out = analyze(capsys, path)
    assert code == 1
    assert "CUSTOM provider 'opa' is not declared" in out


def test_analyze_hands_routing_to_the_traffic_loader(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "vs.yaml"
    path.write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: r, namespace: foo}\n"
        "spec:\n  hosts: [models]\n  http:\n  - route: [{destination: {host: models}}]\n"
        "    bogusField: 1\n"
    )
    code, out = analyze(capsys, path)
    assert code == 1
    assert "bogusField" in out
    assert f"{path}:8" in out


def test_analyze_follows_a_sidecar_bootstrap(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "p.yaml").write_text(
        policy("for-other", "selector: {matchLabels: {app: other}}\nrules: [{}]")
    )
    boot = tmp_path / "proxy.yaml"
    boot.write_text(
        "identity: {cert: c.pem, key: k.pem, bundle: b.pem}\n"
        "workload: {namespace: foo, labels: {app: httpbin}}\n"
        "inbound: {listen: '127.0.0.1:15006', app: '127.0.0.1:8080', policies: [p.yaml]}\n"
    )
    code, out = analyze(capsys, boot)
    assert code == 0, out
    assert "2 file(s)" in out
    assert "foo/for-other: selector app=other matches no known workload" in out
    boot.write_text(boot.read_text() + "inbond: {}\n")
    code, out = analyze(capsys, boot)
    assert code == 1
    assert f"{boot}:4: error: inbond: unknown field" in out
