"""``meshlet audit verify``: exit status and the first broken line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshlet.cli.main import main
from meshlet.clock import ManualClock
from meshlet.telemetry.audit import AuditLog


def write(path: Path, count: int, max_bytes: int = 1 << 20) -> None:
    log = AuditLog(path, clock=ManualClock(), max_bytes=max_bytes, backups=20)
    for i in range(count):
        log.record({"request_id": f"r{i}", "decision": "DENY"})
    log.close()


def test_verify_intact_log(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 30)
    assert main(["audit", "verify", str(path)]) == 0
    assert "ok: 30 record(s) in 1 file(s), chain intact from the first record" in (
        capsys.readouterr().out
    )


def test_verify_rotated_set(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 200, max_bytes=3000)
    assert main(["audit", "verify", "--rotated", "--json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["lines"], report["from_genesis"]) == (True, 200, True)


def test_verify_names_first_broken_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 10)
    lines = path.read_text().splitlines(keepends=True)
    del lines[3]
    path.write_text("".join(lines))
    assert main(["audit", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}:4: broken: prev does not match")
    assert "(3 record(s) verified before it)" in out
