"""End to end through two real sidecars (client -> outbound -> mTLS -> inbound with
the PolicyGate -> app): allowed and denied principals, a JWT-required path with a
JWKS fetched over HTTP, CUSTOM ext-authz, and the audit log verified afterwards."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from tests.support.apps import closed_port, http_server
from tests.support.pki import Pki
from tests.support.sidecars import CLIENT_ID, LOCAL, start_pair, stop_pair

from meshlet.clock import MonotonicClock
from meshlet.config.bootstrap import (
    Address,
    AuditConfig,
    BootstrapConfig,
    IdentityFiles,
    InboundConfig,
    MtlsMode,
    WorkloadConfig,
)
from meshlet.proxy.authz import PolicyGate, build_gate
from meshlet.telemetry.audit import verify

pytestmark = pytest.mark.integration
T = 10.0
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = json.dumps({"keys": [{**json.loads(RSAAlgorithm.to_jwk(KEY.public_key())), "kid": "k1"}]})


# -------------------------------------------------------------- tiny HTTP servers


def ext_authz(
    method: str, target: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    if headers.get("x-ext") == "allow":
        return 200, {"x-ext-user": "bob"}, b""
    return 403, {}, b"no"


def jwks_handler(
    method: str, target: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    return (
        (200, {"content-type": "application/json"}, JWKS.encode())
        if target == "/jwks"
        else (404, {}, b"")
    )


# ----------------------------------------------------------------- policies


def policies(jwks_port: int, authz_port: int, dead_port: int) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-client, namespace: ml}}
spec:
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/apps/sa/client"]}}}}]
    to: [{{operation: {{paths: ["/hello"]}}}}]
  - from: [{{source: {{requestPrincipals: ["https://issuer.test/*"]}}}}]
    to: [{{operation: {{paths: ["/headers"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-admin, namespace: ml}}
spec:
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin*"]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext, namespace: ml}}
spec:
  action: CUSTOM
  provider: {{name: ext}}
  rules: [{{when: [{{key: "request.headers[x-ext]", values: ["*"]}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ext-dead, namespace: ml}}
spec:
  action: CUSTOM
  provider: {{name: dead}}
  rules: [{{when: [{{key: "request.headers[x-dead]", values: ["*"]}}]}}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: ml}}
spec:
  jwtRules:
  - issuer: https://issuer.test
    jwksUri: http://{LOCAL}:{jwks_port}/jwks
    audiences: [models]
---
apiVersion: meshlet.dev/v1alpha1
kind: ExtensionProvider
metadata: {{name: ext, namespace: ml}}
spec:
  envoyExtAuthzHttp:
    service: {LOCAL}
    port: {authz_port}
    pathPrefix: /check
    timeout: 2s
    includeRequestHeadersInCheck: [x-ext]
    headersToUpstreamOnAllow: [x-ext-user]
---
apiVersion: meshlet.dev/v1alpha1
kind: ExtensionProvider
metadata: {{name: dead, namespace: ml}}
spec:
  envoyExtAuthzHttp: {{service: {LOCAL}, port: {dead_port}, timeout: 1s}}
"""


def audited_gate(tmp_path: Path, policies: Path, workload: WorkloadConfig) -> PolicyGate:
    """The inbound gate a STRICT sidecar of ``workload`` builds from ``policies``,
    auditing to ``tmp_path/audit.log`` (the identity files are never read)."""
    config = BootstrapConfig(
        identity=IdentityFiles(cert=tmp_path / "c", key=tmp_path / "k", bundle=tmp_path / "b"),
        admin=None,
        inbound=InboundConfig(
            listen=Address(host=LOCAL, port=0),
            app=Address(host=LOCAL, port=1),
            mtls=MtlsMode.STRICT,
            protocol="http",
            policies=(policies,),
        ),
        outbound=None,
        workload=workload,
        audit=AuditConfig(path=tmp_path / "audit.log"),
    )
    gate = build_gate(config, clock=MonotonicClock())
    assert gate is not None
    return gate


class Env:
    def __init__(self, gate: PolicyGate, pair: Any, authz_seen: list[Any], jwks_seen: list[Any]):
        self.gate, self.pair, self.authz_seen, self.jwks_seen = gate, pair, authz_seen, jwks_seen


@pytest.fixture
async def env(pki: Pki, tmp_path: Path) -> AsyncIterator[Env]:
    jwks_server, jwks_port, jwks_seen = await http_server(jwks_handler)
    authz_server, authz_port, authz_seen = await http_server(ext_authz)
    path = tmp_path / "policies.yaml"
    path.write_text(policies(jwks_port, authz_port, closed_port()))
    workload = WorkloadConfig(name="inference", namespace="ml", service_account="inference")
    gate = audited_gate(tmp_path, path, workload)
    pair = await start_pair(pki, gate=gate)
    try:
        yield Env(gate, pair, authz_seen, jwks_seen)
    finally:
        await stop_pair(pair)
        gate.close()
        for server in (jwks_server, authz_server):
            server.close()


def token(**claims: Any) -> str:
    body = {
        "iss": "https://issuer.test",
        "sub": "alice",
        "aud": "models",
        "exp": time.time() + 600,
        **claims,
    }
    return jwt.encode(body, KEY, algorithm="RS256", headers={"kid": "k1"})


async def test_policy_decisions_through_two_sidecars(env: Env) -> None:
    bearer = {"authorization": f"Bearer {token()}"}
    async with httpx.AsyncClient(proxy=env.pair.proxy_url, timeout=T) as client:
        allowed = await client.get("http://inference/hello")
        admin = await client.get("http://inference/admin/users")
        other_path = await client.get("http://inference/status/200")
        no_jwt = await client.get("http://inference/headers")
        bad_jwt = await client.get(
            "http://inference/headers", headers={"authorization": f"Bearer {token(aud='x')}"}
        )
        good_jwt = await client.get("http://inference/headers", headers=bearer)
        ext_ok = await client.get("http://inference/headers", headers={**bearer, "x-ext": "allow"})
        ext_no = await client.get("http://inference/hello", headers={"x-ext": "nope"})
        dead = await client.get("http://inference/hello", headers={"x-dead": "1"})

    assert allowed.status_code == 200
    assert allowed.text == "hello"
    assert (admin.status_code, admin.text.strip()) == (403, "RBAC: access denied")
    assert other_path.status_code == 403
    assert no_jwt.status_code == 403  # no token: authn passes, ALLOW needs a principal
    assert (bad_jwt.status_code, bad_jwt.text.strip()) == (401, "Jwt verification fails")
    assert good_jwt.status_code == 200
    assert "authorization" not in dict(good_jwt.json()["headers"])  # not forwarded
    assert env.jwks_seen[0][0] == "GET /jwks"
    assert len(env.jwks_seen) == 1  # fetched once, then cached
    assert ext_ok.status_code == 200
    assert dict(ext_ok.json()["headers"])["x-ext-user"] == "bob"
    assert ext_no.status_code == 403
    assert env.authz_seen[0][0] == "GET /check/headers"
    assert env.authz_seen[0][1]["x-forwarded-client-cert"] == f"URI={CLIENT_ID}"
    assert "authorization" not in env.authz_seen[0][1]  # only the listed headers
    assert dead.status_code == 403  # unreachable authorizer: fail closed

    env.gate.close()
    assert env.gate.audit is not None
    result = verify(env.gate.audit.path)
    assert result.ok, result
    records = [json.loads(line) for line in env.gate.audit.path.read_text().splitlines()]
    summary = [(r["path"], r["decision"], r["response_code"]) for r in records]
    assert summary == [
        ("/admin/users", "DENY", 403),
        ("/status/200", "DENY", 403),
        ("/headers", "DENY", 403),
        ("/headers", "DENY", 401),
        ("/hello", "DENY", 403),
        ("/hello", "DENY", 403),
    ]
    assert records[0]["policy"] == "ml/deny-admin"
    assert records[0]["source_principal"] == CLIENT_ID
    assert records[0]["destination_workload"] == "ml/inference"


async def test_denied_principal(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "only-other.yaml"
    path.write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: only-other, namespace: ml}\n"
        "spec:\n  rules: [{from: [{source: {principals: [cluster.local/ns/ml/sa/other]}}]}]\n"
    )
    gate = audited_gate(tmp_path, path, WorkloadConfig(namespace="ml"))
    pair = await start_pair(pki, gate=gate)
    try:
        async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T) as client:
            denied = await client.get("http://inference/hello")
        assert denied.status_code == 403
        assert pair.app.requests == 0
    finally:
        await stop_pair(pair)
        gate.close()
    (record,) = [json.loads(x) for x in (tmp_path / "audit.log").read_text().splitlines()]
    assert (record["source_principal"], record["decision"]) == (CLIENT_ID, "DENY")
