"""A real ``meshlet proxy --workers 2`` process denying a principal: every audit
record the workers queued is on disk after SIGTERM (workers end with os._exit,
which skips atexit, so ``ProxyServer.close`` must drain the gate's audit log)."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.pki import Pki
from tests.support.processes import inbound_bootstrap, start_proxy, write_bootstrap
from tests.support.proxy_app import start_app
from tests.support.sidecars import CLIENT_ID, SERVER_ID

pytestmark = [pytest.mark.integration, pytest.mark.slow]
T = 20.0
REQUESTS = 24

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: ml}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/apps/sa/client"]}}]}]
"""


async def _denied_request(ctx: ssl.SSLContext, host: str, port: int, n: int) -> tuple[bytes, bytes]:
    """One request on its own connection, so the kernel spreads them over workers."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), T)
    try:
        rid = b"audit-%d" % n
        writer.write(
            b"GET /hello HTTP/1.1\r\nhost: inference\r\nx-request-id: " + rid + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        await asyncio.wait_for(reader.read(), T)
        return rid, head
    finally:
        writer.close()


async def test_workers_flush_every_audit_record_on_sigterm(pki: Pki, tmp_path: Path) -> None:
    app, stats, app_port = await start_app()
    server = pki.files(SERVER_ID, "server")
    client = pki.files(CLIENT_ID, "client")
    (tmp_path / "policies.yaml").write_text(POLICY)
    audit = tmp_path / "audit.log"
    config = tmp_path / "in.yaml"
    policies = [str(tmp_path / "policies.yaml")]
    inbound = inbound_bootstrap(server, app_port, admin=None, mtls="STRICT", policies=policies)
    write_bootstrap(config, {**inbound, "audit": {"path": str(audit)}})
    proxy = await start_proxy(config, workers=2)
    proc = proxy.process
    try:
        ready = proxy.ready
        assert {r["inbound"] for r in ready} == {ready[0]["inbound"]}  # one shared port
        host, port = ready[0]["inbound"].rsplit(":", 1)
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(client.bundle))
        ctx.check_hostname = False  # SPIFFE SVIDs carry a URI SAN, no DNS name
        ctx.load_cert_chain(str(client.cert), str(client.key))
        sent: list[bytes] = []
        for start in range(0, REQUESTS, 4):  # bounded: 6 rounds of 4 connections
            results = await asyncio.gather(
                *(_denied_request(ctx, host, int(port), n) for n in range(start, start + 4))
            )
            for rid, head in results:
                assert head.startswith(b"HTTP/1.1 403"), head
                sent.append(rid)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), T) == 0
    finally:
        proxy.kill()  # the workers too: an orphaned worker would hang the loop's close
        await proc.wait()
        app.close()
        stats.close_all()
    assert stats.requests == 0
    assert sorted(_verified_request_ids(tmp_path)) == sorted(r.decode() for r in sent)


def _verified_request_ids(tmp_path: Path) -> list[str]:
    """Run ``meshlet audit verify`` on each worker's chain; the request ids logged."""
    files = sorted(p for p in tmp_path.glob("audit.log*") if not p.name.endswith(".lock"))
    found: list[str] = []
    for f in files:
        done = subprocess.run(
            [sys.executable, "-m", "meshlet", "audit", "verify", "--json", str(f)],
            capture_output=True,
            text=True,
            timeout=T,
            check=False,
        )
        result = json.loads(done.stdout)
        assert (done.returncode, result["ok"], result["from_genesis"]) == (0, True, True), done
        records = [json.loads(line) for line in f.read_text().splitlines()]
        assert result["lines"] == len(records)
        found.extend(r["request_id"] for r in records)
    return found
