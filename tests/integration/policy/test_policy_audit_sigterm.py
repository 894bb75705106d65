"""Nothing queued in the audit log is lost when the process is stopped with SIGTERM
and shuts down normally (the sidecar's SIGTERM path ends in a normal exit)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshlet.telemetry.audit import verify

pytestmark = pytest.mark.integration

CHILD = """
import signal, sys
from meshlet.clock import MonotonicClock
from meshlet.telemetry.audit import AuditLog

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
log = AuditLog(sys.argv[1], clock=MonotonicClock(), flush_interval_s=3600, batch=10**9)
for i in range(20000):
    log.record({"request_id": f"r{i}", "decision": "DENY"})
print("ready", flush=True)
signal.pause()
"""


def _stop_after_ready(child: subprocess.Popen[str], path: Path) -> None:
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        # with a 1 h interval and no batch trigger, nothing has been written yet
        assert not path.exists() or path.stat().st_size == 0
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)


def test_sigterm_flushes_every_queued_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True
    ) as child:
        _stop_after_ready(child, path)
    result = verify(path)
    assert (result.ok, result.lines, result.from_genesis) == (True, 20000, True)
    assert json.loads(path.read_text().splitlines()[-1])["request_id"] == "r19999"
