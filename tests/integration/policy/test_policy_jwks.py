"""jwksUri over real HTTP: the first request waits for the fetch, a failed fetch
is retried in the background (never per request), and keys then work."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from tests.support.apps import Answer, http_server
from tests.support.waiting import wait_until

from meshlet.clock import ManualClock
from meshlet.config.bootstrap import (
    Address,
    BootstrapConfig,
    IdentityFiles,
    InboundConfig,
    MtlsMode,
    WorkloadConfig,
)
from meshlet.proxy.authz import JWKS_RETRY_S, PolicyGate, build_gate
from meshlet.proxy.hooks import GateVerdict, RequestInfo

pytestmark = pytest.mark.integration
KEY = ec.generate_private_key(ec.SECP256R1())
JWKS = json.dumps({"keys": [json.loads(ECAlgorithm.to_jwk(KEY.public_key()))]}).encode()


class FlakyJwks:
    """A JWKS endpoint that answers 503 to the first ``failures`` GETs, then the JWKS."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.hits = 0

    def __call__(self, method: str, target: str, headers: dict[str, str]) -> Answer:
        self.hits += 1
        return (200, {}, JWKS) if self.hits > self.failures else (503, {}, b"down")


def gate_for(tmp_path: Path, port: int, clock: ManualClock) -> PolicyGate:
    policies = tmp_path / "p.yaml"
    policies.write_text(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        "metadata: {name: jwt, namespace: ml}\n"
        f"spec:\n  jwtRules: [{{issuer: iss, jwksUri: 'http://127.0.0.1:{port}/keys'}}]\n"
    )
    config = BootstrapConfig(
        identity=IdentityFiles(cert=tmp_path / "c", key=tmp_path / "k", bundle=tmp_path / "b"),
        admin=None,
        inbound=InboundConfig(
            listen=Address(host="127.0.0.1", port=0), app=Address(host="127.0.0.1", port=1),
            mtls=MtlsMode.PERMISSIVE, protocol="http", policies=(policies,),
        ),
        outbound=None,
        workload=WorkloadConfig(namespace="ml"),
    )  # fmt: skip
    gate = build_gate(config, clock=clock)
    assert gate is not None
    return gate


def request(clock: ManualClock) -> RequestInfo:
    token = jwt.encode({"iss": "iss", "sub": "a", "exp": clock.wall() + 3600}, KEY, "ES256")
    return RequestInfo(
        method="GET", path="/", host="h", headers=[(b"authorization", f"Bearer {token}".encode())],
        source_principal=None, source_ip="127.0.0.1", source_port=1, destination_ip="127.0.0.1",
        destination_port=2, sni=None, mtls=False, request_id="r",
    )  # fmt: skip


async def verdict_of(result: GateVerdict | Awaitable[GateVerdict]) -> GateVerdict:
    if isinstance(result, GateVerdict):
        return result
    return await asyncio.wait_for(result, timeout=10)


async def test_failed_jwks_fetch_is_retried_in_background(tmp_path: Path) -> None:
    jwks = FlakyJwks(failures=1)
    server, port, _ = await http_server(jwks)
    clock = ManualClock()
    gate = gate_for(tmp_path, port, clock)
    try:
        first = gate.check(request(clock))
        assert not isinstance(first, GateVerdict)  # waits for the first fetch
        assert (await verdict_of(first)).status == 401  # the fetch failed: no keys
        again = gate.check(request(clock))
        assert isinstance(again, GateVerdict)  # no refetch per request
        assert again.status == 401
        assert jwks.hits == 1
        clock.advance(JWKS_RETRY_S + 1)
        gate.check(request(clock))  # schedules the retry, answers from what it has
        await wait_until(
            lambda: bool(gate.authenticator.jwks_uris) and jwks.hits == 2 and not gate._refreshing
        )
        assert jwks.hits == 2
        assert (await verdict_of(gate.check(request(clock)))).allowed
    finally:
        server.close()
        await server.wait_closed()
