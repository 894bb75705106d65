"""``fromCookies`` end to end: httpx and curl send cookies through two real
sidecars (client -> outbound -> mTLS -> inbound with the PolicyGate -> app)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from tests.support.binaries import requires
from tests.support.pki import Pki
from tests.support.sidecars import LOCAL, Pair, start_pair, stop_pair

from meshlet.clock import MonotonicClock
from meshlet.config.bootstrap import (
    Address,
    BootstrapConfig,
    IdentityFiles,
    InboundConfig,
    MtlsMode,
    WorkloadConfig,
)
from meshlet.proxy.authz import PolicyGate, build_gate

pytestmark = pytest.mark.integration
T = 15.0
ISS = "https://issuer.test"
KEY = ec.generate_private_key(ec.SECP256R1())
JWKS = json.dumps({"keys": [{**json.loads(ECAlgorithm.to_jwk(KEY.public_key())), "kid": "k"}]})

POLICIES = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: cookie-jwt, namespace: ml}}
spec:
  jwtRules:
  - issuer: {ISS}
    jwks: '{JWKS}'
    fromCookies: [session, backup]
    outputClaimToHeaders: [{{header: x-user, claim: sub}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: need-jwt, namespace: ml}}
spec:
  rules: [{{from: [{{source: {{requestPrincipals: ["{ISS}/*"]}}}}]}}]
"""


def token(**claims: Any) -> str:
    body = {"iss": ISS, "sub": "alice", "exp": time.time() + 600, **claims}
    return jwt.encode(body, KEY, algorithm="ES256", headers={"kid": "k"})


def gate_for(tmp_path: Path) -> PolicyGate:
    path = tmp_path / "policies.yaml"
    path.write_text(POLICIES)
    config = BootstrapConfig(
        identity=IdentityFiles(cert=tmp_path / "c", key=tmp_path / "k", bundle=tmp_path / "b"),
        admin=None,
        inbound=InboundConfig(
            listen=Address(host=LOCAL, port=0), app=Address(host=LOCAL, port=1),
            mtls=MtlsMode.STRICT, protocol="http", policies=(path,),
        ),
        outbound=None,
        workload=WorkloadConfig(name="inference", namespace="ml", service_account="inference"),
    )  # fmt: skip
    gate = build_gate(config, clock=MonotonicClock())
    assert gate is not None
    return gate


@pytest.fixture
async def pair(pki: Pki, tmp_path: Path) -> AsyncIterator[Pair]:
    gate = gate_for(tmp_path)
    pair = await start_pair(pki, gate=gate)
    try:
        yield pair
    finally:
        await stop_pair(pair)
        gate.close()


async def curl(pair: Pair, *args: str) -> tuple[int, str]:
    """curl through the outbound sidecar; the status and the body."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", str(int(T)), "-x", pair.proxy_url,
        "-w", "\n%{http_code}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=T + 10)
    assert proc.returncode == 0, err.decode()
    body, _, code = out.decode().rpartition("\n")
    return int(code), body


async def get(
    pair: Pair, cookies: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    """One GET /headers through the sidecars, with a client holding ``cookies``."""
    async with httpx.AsyncClient(proxy=pair.proxy_url, timeout=T, cookies=cookies) as client:
        return await client.get("http://inference/headers", headers=headers)


async def test_httpx_cookie_carries_the_token(pair: Pair) -> None:
    good = token()
    ok = await get(pair, {"session": good})
    none = await get(pair)
    wrong_cookie = await get(pair, {"other": good})
    bearer_only = await get(pair, headers={"authorization": f"Bearer {good}"})
    second_name = await get(pair, {"backup": token(sub="bob")})
    assert ok.status_code == 200, ok.text
    seen = dict(ok.json()["headers"])
    assert seen["x-user"] == "alice"
    assert f"session={good}" in seen["cookie"]  # the Cookie header is forwarded, as Envoy
    assert none.status_code == 403  # no token: authn passes, the ALLOW needs a principal
    assert wrong_cookie.status_code == 403  # only the named cookies are read
    assert bearer_only.status_code == 403  # fromCookies replaces the default locations
    assert second_name.status_code == 200
    assert dict(second_name.json()["headers"])["x-user"] == "bob"


@requires("curl")
async def test_curl_cookie_good_bad_and_expired(pair: Pair) -> None:
    url = "http://inference/headers"
    good_code, good_body = await curl(pair, "-b", f"theme=dark; session={token()}", url)
    bad_code, bad_body = await curl(pair, "-b", "session=not.a.jwt", url)
    old_code, _ = await curl(pair, "-b", f"session={token(exp=time.time() - 3600)}", url)
    # a bad token in one named cookie fails the request even with a good one in another
    mixed_code, _ = await curl(pair, "-b", f"session={token()}; backup=junk", url)
    assert good_code == 200, good_body
    assert dict(json.loads(good_body)["headers"])["x-user"] == "alice"
    assert (bad_code, bad_body.strip()) == (401, "Jwt verification fails")
    assert old_code == 401
    assert mixed_code == 401
    assert pair.app.requests >= 1
