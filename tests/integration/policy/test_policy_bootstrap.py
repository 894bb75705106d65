"""The real wiring: a sidecar whose bootstrap lists ``inbound.policies`` builds the
PolicyGate itself (ProxyServer -> meshlet.proxy.authz.build_gate)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from tests.support.pki import Pki
from tests.support.proxy_app import start_app
from tests.support.sidecars import CLIENT_ID, FAST, LOCAL, SERVER_ID, bound, port_of

from meshlet.clock import MonotonicClock
from meshlet.config.bootstrap import (
    Address,
    AuditConfig,
    BootstrapConfig,
    EndpointConfig,
    InboundConfig,
    MtlsMode,
    OutboundConfig,
    ServiceConfig,
    WorkloadConfig,
)
from meshlet.proxy.server import ProxyServer
from meshlet.telemetry.audit import verify
from meshlet.telemetry.metrics import GoldenMetrics

pytestmark = pytest.mark.integration

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: ml}
spec:
  selector: {matchLabels: {app: inference}}
  action: DENY
  rules: [{to: [{operation: {methods: ["DELETE"]}}]}]
"""


async def test_bootstrap_policies_are_enforced(pki: Pki, tmp_path: Path) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICY)
    app_server, stats, app_port = await start_app()
    in_sock, out_sock = bound(), bound()
    audit_path = tmp_path / "audit.log"
    in_cfg = BootstrapConfig(
        identity=pki.files(SERVER_ID, "server"),
        admin=None,
        inbound=InboundConfig(
            listen=Address(host=LOCAL, port=port_of(in_sock)),
            app=Address(host=LOCAL, port=app_port),
            mtls=MtlsMode.STRICT, protocol="http", policies=(policies,),
        ),
        outbound=None,
        # namespace and service account come from the SVID (ns/ml/sa/inference)
        workload=WorkloadConfig(labels=(("app", "inference"),)),
        audit=AuditConfig(path=audit_path),
        timeouts=FAST,
    )  # fmt: skip
    out_cfg = BootstrapConfig(
        identity=pki.files(CLIENT_ID, "client"),
        admin=None,
        inbound=None,
        outbound=OutboundConfig(
            listen=Address(host=LOCAL, port=port_of(out_sock)),
            services=(ServiceConfig(name="inference", protocol="http", endpoints=(
                EndpointConfig(address=Address(host=LOCAL, port=port_of(in_sock)),
                               identity=SERVER_ID),
            )),),
        ),
        timeouts=FAST,
    )  # fmt: skip
    clock = MonotonicClock()
    inbound = ProxyServer(in_cfg, metrics=GoldenMetrics(), clock=clock)
    outbound = ProxyServer(out_cfg, metrics=GoldenMetrics(), clock=clock)
    await inbound.start({"inbound": in_sock})
    await outbound.start({"outbound": out_sock})
    try:
        proxy = f"http://{LOCAL}:{port_of(out_sock)}"
        async with httpx.AsyncClient(proxy=proxy, timeout=10.0) as client:
            ok = await client.get("http://inference/hello")
            denied = await client.delete("http://inference/hello")
        assert ok.status_code == 200
        assert (denied.status_code, denied.text.strip()) == (403, "RBAC: access denied")
        assert stats.requests == 1
    finally:
        await outbound.close()
        await inbound.close()
        app_server.close()
        stats.close_all()
        gate = inbound._gate  # the server built it; closing flushes the audit log
        close = getattr(gate, "close", None)
        if close is not None:
            close()
    (record,) = [json.loads(x) for x in audit_path.read_text().splitlines()]
    assert (record["method"], record["policy"], record["destination_workload"]) == (
        "DELETE",
        "ml/deny-delete",
        "ml/inference",
    )
    assert verify(audit_path).ok
