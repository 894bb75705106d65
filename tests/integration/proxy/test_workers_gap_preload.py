"""``--workers N`` shares its imports: a worker started after ``preload(config)``
imports nothing more, whatever features the bootstrap turns on.

Each worker importing on its own (pydantic, cryptography and PyJWT for the policy
gate, uvloop, the proxy itself) is what made two workers cost twice the memory.
The check runs in a fresh interpreter: the test session's own ``sys.modules``
already holds everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.support.pki import Pki
from tests.support.processes import REPO, identity_block, write_bootstrap
from tests.support.sidecars import SERVER_ID

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLICY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-intruder, namespace: ml}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/apps/sa/intruder"]}}]}]
"""

# One worker's start-up in this interpreter, after the parent's preload: the
# modules it imports on the way to its ready line (printed as JSON, last line).
SCRIPT = """
import asyncio, json, sys
import uvloop
from meshlet.config.bootstrap import load_bootstrap
from meshlet.proxy import runner
from meshlet.proxy.workers import preload

config = load_bootstrap(sys.argv[1])
preload(config)
before = set(sys.modules)
stop = asyncio.Event()
announce = runner._announce

def announced(*args):
    announce(*args)
    stop.set()

runner._announce = announced
uvloop.run(asyncio.wait_for(runner.serve(config, stop=stop), 60))
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _bootstrap(pki: Pki, tmp_path: Path) -> Path:
    (tmp_path / "policy.yaml").write_text(POLICY)
    spiffe = SERVER_ID
    config: dict[str, Any] = {
        "identity": identity_block(pki.files(SERVER_ID, "server")),
        "admin": "127.0.0.1:0",
        "workload": {"name": "inference", "namespace": "ml"},
        "inbound": {
            "listen": "127.0.0.1:0",
            "app": "127.0.0.1:9",
            "mtls": "STRICT",
            "policies": [str(tmp_path / "policy.yaml")],
        },
        "audit": {"path": str(tmp_path / "audit.log")},
        "access_log": {"path": str(tmp_path / "access.log")},
        "outbound": {
            "listen": "127.0.0.1:0",
            "services": {
                "inference": {"endpoints": [{"address": "127.0.0.1:9", "identity": spiffe}]},
                "grpc": {
                    "protocol": "tcp",
                    "listen": "127.0.0.1:0",
                    "endpoints": [{"address": "127.0.0.1:9", "identity": spiffe}],
                },
            },
        },
    }
    return write_bootstrap(tmp_path / "proxy.yaml", config)


def test_a_worker_imports_nothing_its_parent_did_not_preload(pki: Pki, tmp_path: Path) -> None:
    config = _bootstrap(pki, tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=str(REPO),
        env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[0])["event"] == "ready"
    imported = json.loads(lines[-1])
    # The standard library's small leftovers do not matter; these do (each is
    # megabytes per worker). A failure names the module to add to
    # meshlet.proxy.workers.preload_modules.
    late = [m for m in imported if m.split(".")[0] in SHARED_ROOTS]
    assert late == []


SHARED_ROOTS = {"meshlet", "pydantic", "pydantic_core", "cryptography", "jwt", "uvloop",
                "httptools", "yaml"}  # fmt: skip
