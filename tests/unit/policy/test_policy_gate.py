"""The proxy's PolicyGate on its synchronous paths (no CUSTOM, no jwksUri): what the
sidecar answers and what lands in the audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from policy_cases import docs, policy

from meshlet.clock import ManualClock
from meshlet.config.bootstrap import (
    Address,
    AuditConfig,
    BootstrapConfig,
    IdentityFiles,
    InboundConfig,
    MtlsMode,
    WorkloadConfig,
)
from meshlet.errors import ConfigError
from meshlet.proxy.authz import DENIED_BODY, JWT_FAILED_BODY, PolicyGate, build_gate
from meshlet.proxy.hooks import GateVerdict, RequestInfo
from meshlet.telemetry.audit import verify

KEY = ec.generate_private_key(ec.SECP256R1())
JWK = json.loads(ECAlgorithm.to_jwk(KEY.public_key()))
CLOCK = ManualClock()
SLEEP = "spiffe://cluster.local/ns/foo/sa/sleep"

POLICIES = docs(
    policy(
        "allow",
        """
rules:
- from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]
- from: [{source: {requestPrincipals: ["https://issuer/*"]}}]
  to: [{operation: {paths: ["/jwt/*"]}}]
- to: [{operation: {ports: ["9000"]}}]
""",
    ),
    policy("deny-admin", "action: DENY\nrules: [{to: [{operation: {paths: ['/admin*']}}]}]"),
    policy("audit-post", "action: AUDIT\nrules: [{to: [{operation: {methods: ['POST']}}]}]"),
    policy(
        "jwt",
        f"""
jwtRules:
- issuer: https://issuer
  jwks: '{json.dumps({"keys": [JWK]})}'
  outputClaimToHeaders: [{{header: x-user, claim: sub}}]
""",
        kind="RequestAuthentication",
    ),
)


def make_gate(tmp_path: Path, text: str = POLICIES, app_port: int = 8000) -> PolicyGate:
    path = tmp_path / "policies.yaml"
    path.write_text(text)
    config = BootstrapConfig(
        identity=IdentityFiles(cert=tmp_path / "c", key=tmp_path / "k", bundle=tmp_path / "b"),
        admin=None,
        inbound=InboundConfig(
            listen=Address(host="127.0.0.1", port=15006),
            app=Address(host="127.0.0.1", port=app_port),
            mtls=MtlsMode.PERMISSIVE, protocol="http", policies=(path,),
        ),
        outbound=None,
        workload=WorkloadConfig(name="httpbin", namespace="foo", service_account="httpbin",
                                labels=(("app", "httpbin"),)),
        audit=AuditConfig(path=tmp_path / "audit.log"),
    )  # fmt: skip
    gate = build_gate(config, clock=CLOCK)
    assert gate is not None
    return gate


def info(**overrides: Any) -> RequestInfo:
    base: dict[str, Any] = {
        "method": "GET", "path": "/headers", "host": "httpbin", "headers": [],
        "source_principal": SLEEP, "source_ip": "10.0.0.1", "source_port": 5555,
        "destination_ip": "10.0.0.2", "destination_port": 15006, "sni": None, "mtls": True,
        "request_id": "req-1",
    }  # fmt: skip
    base.update(overrides)
    return RequestInfo(**base)


def decide(gate: PolicyGate, request: RequestInfo, code: int = 200) -> GateVerdict:
    verdict = gate.check(request)
    assert isinstance(verdict, GateVerdict)
    gate.finish(request, verdict, verdict.status if not verdict.allowed else code)
    return verdict


def records(gate: PolicyGate) -> list[dict[str, Any]]:
    assert gate.audit is not None
    gate.close()
    assert verify(gate.audit.path).ok
    return [json.loads(line) for line in gate.audit.path.read_text().splitlines()]


def token(**claims: Any) -> str:
    body = {"iss": "https://issuer", "sub": "alice", "exp": CLOCK.wall() + 60, **claims}
    return jwt.encode(body, KEY, algorithm="ES256")


def test_allowed_principal_is_not_audited(tmp_path: Path) -> None:
    gate = make_gate(tmp_path)
    assert decide(gate, info()).allowed
    assert records(gate) == []


def test_denied_request_gets_403_and_an_audit_record(tmp_path: Path) -> None:
    gate = make_gate(tmp_path)
    verdict = decide(gate, info(path="/admin/users?token=secret", request_id="r-9"))
    assert (verdict.allowed, verdict.status, verdict.reason) == (False, 403, DENIED_BODY)
    (rec,) = records(gate)
    assert rec["decision"] == "DENY"
    assert (rec["policy"], rec["rule"], rec["response_code"]) == ("foo/deny-admin", 0, 403)
    assert (rec["request_id"], rec["path"], rec["source_principal"]) == (
        "r-9",
        "/admin/users",
        SLEEP,
    )
    assert rec["destination_workload"] == "foo/httpbin"


def test_unknown_principal_is_denied_by_allow_policies(tmp_path: Path) -> None:
    gate = make_gate(tmp_path)
    verdict = decide(gate, info(source_principal="spiffe://cluster.local/ns/foo/sa/other"))
    assert verdict.status == 403
    (rec,) = records(gate)
    assert (rec["policy"], rec["reason"]) == (None, "denied: ALLOW policies apply but none matched")


def test_audit_policy_records_allowed_requests(tmp_path: Path) -> None:
    gate = make_gate(tmp_path)
    assert decide(gate, info(method="POST"), code=201).allowed
    (rec,) = records(gate)
    assert (rec["decision"], rec["audit_policy"], rec["response_code"]) == (
        "ALLOW",
        "foo/audit-post",
        201,
    )


def test_valid_jwt_authenticates_and_is_stripped(tmp_path: Path) -> None:
    gate = make_gate(tmp_path)
    request = info(source_principal=None, mtls=False, path="/jwt/x",
                   headers=[(b"authorization", b"Bearer " + token().encode())])  # fmt: skip
    verdict = decide(gate, request)
    assert verdict.allowed
    assert verdict.remove_headers == (b"authorization",)
    assert verdict.set_headers == ((b"x-user", b"alice"),)


def test_missing_jwt_is_left_to_policy(tmp_path: Path) -> None:
    gate = make_gate(tmp_path)
    verdict = decide(gate, info(source_principal=None, mtls=False, path="/jwt/x"))
    assert (verdict.allowed, verdict.status) == (False, 403)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: token(exp=CLOCK.wall() - 3600), id="expired"),
        pytest.param(lambda: token(iss="https://other"), id="unknown-issuer"),
        pytest.param(lambda: "garbage", id="garbage"),
    ],
)
def test_invalid_jwt_gets_401(tmp_path: Path, bad: Any) -> None:
    gate = make_gate(tmp_path)
    request = info(path="/jwt/x", headers=[(b"authorization", b"Bearer " + bad().encode())])
    verdict = decide(gate, request)
    assert (verdict.allowed, verdict.status, verdict.reason) == (False, 401, JWT_FAILED_BODY)
    (rec,) = records(gate)
    assert rec["response_code"] == 401
    assert rec["reason"].startswith("JWT: ")


def test_strict_peer_authentication_refuses_plaintext(tmp_path: Path) -> None:
    strict = docs(POLICIES, policy("default", "mtls: {mode: STRICT}", kind="PeerAuthentication"))
    gate = make_gate(tmp_path, strict)
    assert gate.mtls_mode() is gate.mtls_mode(8000)
    assert gate.mtls_mode().value == "STRICT"
    assert decide(gate, info(mtls=False, source_principal=None)).status == 403
    assert decide(gate, info()).allowed


TCP_POLICIES = docs(
    policy("allow-port", "rules: [{to: [{operation: {ports: ['9000']}}]}]"),
    policy("allow-get", "rules: [{to: [{operation: {methods: ['GET']}}]}]"),
)


@pytest.mark.parametrize(("app_port", "allowed"), [(9000, True), (8000, False)])
def test_tcp_connections_use_the_app_port(tmp_path: Path, app_port: int, allowed: bool) -> None:
    gate = make_gate(tmp_path, TCP_POLICIES, app_port=app_port)
    tcp = info(method="", path="", host="", source_principal=None, mtls=False)
    verdict = gate.check_connection(tcp)
    assert verdict.allowed is allowed
    logged = records(gate)
    assert [(r["decision"], r["response_code"]) for r in logged] == (
        [] if allowed else [("DENY", None)]
    )


def test_tcp_deny_with_http_fields_denies_every_connection(tmp_path: Path) -> None:
    # Istio: a DENY rule's HTTP-only fields are ignored for TCP, so it matches more
    gate = make_gate(tmp_path, app_port=9000)
    verdict = gate.check_connection(info(method="", path="", host=""))
    assert not verdict.allowed
    (rec,) = records(gate)
    assert rec["policy"] == "foo/deny-admin"


def test_custom_policy_with_unknown_provider_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown providers: opa"):
        make_gate(tmp_path, policy("c", "action: CUSTOM\nprovider: {name: opa}\nrules: [{}]"))


@pytest.mark.parametrize("path", ["/hello/../admin/x", "/hello/%2e%2e/admin", "/%61dmin"])
def test_paths_are_normalized_before_matching(tmp_path: Path, path: str) -> None:
    gate = make_gate(tmp_path)
    verdict = decide(gate, info(path=path))
    assert verdict.status == 403
    (rec,) = records(gate)
    assert rec["policy"] == "foo/deny-admin"
