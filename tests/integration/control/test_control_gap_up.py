"""``meshlet up`` in control-plane mode: a ``protocol: tcp`` service works as in
static mode (the app finds it in ``MESHLET_TCP_<SERVICE>``), and the audit logs
land where static mode puts them, control plane's included, with intact chains."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
from tests.support.http import http_get
from tests.support.waiting import eventually

from meshlet.config.mesh import load_mesh
from meshlet.mesh.runner import MeshRunner
from meshlet.telemetry.audit import verify

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ECHO_SERVER = (
    "import socketserver, sys\n"
    "class H(socketserver.StreamRequestHandler):\n"
    "    def handle(self):\n"
    "        for line in self.rfile:\n"
    "            self.wfile.write(b'echo:' + line)\n"
    "socketserver.ThreadingTCPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)
# Connects once, prints the answer, then idles (a client that exits would be restarted).
ECHO_CLIENT = (
    "import os, socket, time\n"
    "host, port = os.environ['MESHLET_TCP_ECHO'].split(':')\n"
    "with socket.create_connection((host, int(port)), timeout=10) as s:\n"
    "    s.sendall(b'hello mesh\\n')\n"
    "    print(s.makefile().readline().strip(), flush=True)\n"
    "time.sleep(600)\n"
)
MESH = """\
services:
  echo:
    protocol: tcp
    workloads:
      - command: ['{python}', '{mesh_dir}/server.py', '{port}']
clients:
  caller:
    command: ['{python}', '{mesh_dir}/client.py']
"""


async def test_tcp_service_and_audit_logs_with_control_plane(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text(ECHO_SERVER)
    (tmp_path / "client.py").write_text(ECHO_CLIENT)
    (tmp_path / "mesh.yaml").write_text(MESH)
    config = dataclasses.replace(load_mesh(tmp_path / "mesh.yaml"), control_plane=True)
    runner = MeshRunner(config, on_event=lambda _event: None)
    await asyncio.wait_for(runner.start(), 120)
    app_log = config.state_dir / "replicas" / "caller-0" / "app.log"
    try:

        def answered() -> str:
            return app_log.read_text().strip() if app_log.exists() else ""

        assert await eventually(answered, timeout_s=30.0) == "echo:hello mesh"
        caller = next(r for r in runner.replicas if r.plan.name == "caller-0")
        host, _, port = (caller.admin or "").rpartition(":")
        status, _, body = await http_get(host, int(port), "/config_dump", timeout_s=10.0)
        assert status == 200
        echo = json.loads(body)["outbound"]["services"]["echo"]
        assert echo["listen"] == f"127.0.0.1:{dict(caller.plan.tcp_ports)['echo']}"
        assert echo["protocol"] == "tcp"
    finally:
        await runner.stop()
    audit = config.state_dir / "audit"
    names = sorted(p.name for p in audit.glob("*.jsonl"))
    assert names == ["caller-0.jsonl", "control.jsonl", "echo-0.jsonl"]
    for log in audit.glob("*.jsonl"):
        result = verify(log)
        assert result.ok, (log, result)
    events = [
        json.loads(line)["event"] for line in (audit / "control.jsonl").read_text().splitlines()
    ]
    assert events.count("token_burned") == 2, events  # one per sidecar
    assert "svid_issued" in events
