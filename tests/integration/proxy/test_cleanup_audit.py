"""A server given its process's audit log (``ProxyServer(audit=...)``, what a
dynamic sidecar does) hands it to every policy gate it builds: the gate built
at start and the one ``apply_config`` builds for a policy change write one hash
chain, and closing the server leaves the log to its owner (no gate closes it)."""

from __future__ import annotations

import asyncio
import dataclasses
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
    BootstrapConfig,
    EndpointConfig,
    InboundConfig,
    MtlsMode,
    OutboundConfig,
    ServiceConfig,
    WorkloadConfig,
)
from meshlet.proxy.server import ProxyServer
from meshlet.telemetry.audit import AuditLog, verify
from meshlet.telemetry.metrics import GoldenMetrics

pytestmark = pytest.mark.integration

T = 15.0  # bound of one request on a loaded machine


def deny_delete(name: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: ml}}
spec:
  selector: {{matchLabels: {{app: inference}}}}
  action: DENY
  rules: [{{to: [{{operation: {{methods: ["DELETE"]}}}}]}}]
"""


async def test_gates_share_the_servers_audit_log_across_a_policy_change(
    pki: Pki, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(deny_delete("deny-delete"))
    second.write_text(deny_delete("deny-delete-v2"))
    log_path = tmp_path / "audit" / "audit.jsonl"
    clock = MonotonicClock()
    audit = AuditLog(log_path, clock=clock)
    app_server, stats, app_port = await start_app()
    in_sock, out_sock = bound(), bound()
    inbound_config = InboundConfig(
        listen=Address(host=LOCAL, port=port_of(in_sock)),
        app=Address(host=LOCAL, port=app_port),
        mtls=MtlsMode.STRICT,
        protocol="http",
        policies=(first,),
    )
    in_cfg = BootstrapConfig(
        identity=pki.files(SERVER_ID, "server"),
        admin=None,
        inbound=inbound_config,
        outbound=None,
        workload=WorkloadConfig(labels=(("app", "inference"),)),
        audit=None,  # like a dynamic sidecar's configs: the log is the process's
        timeouts=FAST,
    )
    out_cfg = BootstrapConfig(
        identity=pki.files(CLIENT_ID, "client"),
        admin=None,
        inbound=None,
        outbound=OutboundConfig(
            listen=Address(host=LOCAL, port=port_of(out_sock)),
            services=(
                ServiceConfig(
                    name="inference",
                    protocol="http",
                    endpoints=(
                        EndpointConfig(
                            address=Address(host=LOCAL, port=port_of(in_sock)),
                            identity=SERVER_ID,
                        ),
                    ),
                ),
            ),
        ),
        timeouts=FAST,
    )
    inbound = ProxyServer(in_cfg, metrics=GoldenMetrics(), clock=clock, audit=audit)
    outbound = ProxyServer(out_cfg, metrics=GoldenMetrics(), clock=clock)
    try:
        await inbound.start({"inbound": in_sock})
        await outbound.start({"outbound": out_sock})
        proxy = f"http://{LOCAL}:{port_of(out_sock)}"
        async with httpx.AsyncClient(proxy=proxy, timeout=T) as client:
            before = await asyncio.wait_for(client.delete("http://inference/a"), T)
            inbound.apply_config(
                dataclasses.replace(
                    in_cfg, inbound=dataclasses.replace(inbound_config, policies=(second,))
                )
            )
            after = await asyncio.wait_for(client.delete("http://inference/b"), T)
        assert (before.status_code, after.status_code) == (403, 403)
    finally:
        await outbound.close()
        await inbound.close()  # closes both gates, the retired one too
        app_server.close()
        stats.close_all()
    # Neither gate closed the log it was given: its owner still can write to it.
    audit.record({"event": "owner_still_writing"})
    audit.close()
    assert not list(log_path.parent.glob("audit.jsonl.w*")), "a second chain was started"
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    denials = [(r["path"], r["policy"]) for r in records if r.get("decision") == "DENY"]
    assert denials == [("/a", "ml/deny-delete"), ("/b", "ml/deny-delete-v2")]
    assert records[-1]["event"] == "owner_still_writing"
    assert verify(log_path).ok
