"""The hash-chained audit log: writes, rotation, resume and tamper detection."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from meshlet.clock import ManualClock
from meshlet.telemetry.audit import GENESIS, AuditLog, rotated_files, verify


def write(path: Path, count: int, **kwargs: int) -> None:
    log = AuditLog(path, clock=ManualClock(), **kwargs)
    for i in range(count):
        log.record({"request_id": f"r{i}", "decision": "DENY", "path": f"/p/{i}"})
    log.close()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_records_are_chained_from_genesis(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 50)
    records = [json.loads(line) for line in lines(path)]
    assert [r["seq"] for r in records] == list(range(50))
    assert records[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in pairwise(records))
    assert records[3]["time"] == 1_700_000_000.0
    result = verify(path)
    assert (result.ok, result.lines, result.from_genesis) == (True, 50, True)


def test_edited_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 20)
    content = lines(path)
    content[6] = content[6].replace('"DENY"', '"ALLOW"')
    path.write_text("".join(content))
    result = verify(path)
    assert not result.ok
    assert (result.file, result.line) == (str(path), 7)
    assert "edited" in result.reason


@pytest.mark.parametrize(
    ("mutate", "bad_line"),
    [
        pytest.param(lambda c: c[:4] + c[5:], 5, id="deleted-line"),
        pytest.param(lambda c: [*c[:4], c[5], c[4], *c[6:]], 5, id="swapped-lines"),
        pytest.param(lambda c: [*c[:-1], c[-1].rstrip("\n")], 20, id="truncated-tail"),
        pytest.param(lambda c: [*c[:2], "not json\n", *c[2:]], 3, id="garbage-line"),
    ],
)
def test_tampering_names_the_first_broken_line(
    tmp_path: Path, mutate: object, bad_line: int
) -> None:
    path = tmp_path / "audit.log"
    write(path, 20)
    path.write_text("".join(mutate(lines(path))))  # type: ignore[operator]
    result = verify(path)
    assert not result.ok
    assert result.line == bad_line, result.reason


def test_rotation_keeps_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 300, max_bytes=4096, backups=50)
    files = rotated_files(path)
    assert len(files) > 3
    assert all(f.stat().st_size <= 4096 for f in files)
    result = verify(files)
    assert (result.ok, result.lines, result.from_genesis) == (True, 300, True)
    # a whole rotated file removed from the middle is detected at the next file
    broken = verify([files[0], *files[2:]])
    assert not broken.ok
    assert (broken.file, broken.line) == (str(files[2]), 1)


def test_rotation_drops_files_beyond_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 300, max_bytes=2048, backups=2)
    files = rotated_files(path)
    assert [f.name for f in files] == ["audit.log.2", "audit.log.1", "audit.log"]
    result = verify(files)
    assert result.ok
    assert not result.from_genesis


def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write(path, 10)
    write(path, 5)
    result = verify(path)
    assert (result.ok, result.lines) == (True, 15)
    assert json.loads(lines(path)[-1])["seq"] == 14


def test_close_drains_everything_queued(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    # a long interval and big batches: only close() can have written these
    write(path, 5000, flush_interval_s=3600, batch=1_000_000)
    assert len(lines(path)) == 5000
    assert verify(path).ok


def test_flush_makes_records_visible(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, clock=ManualClock(), flush_interval_s=3600, batch=1_000_000)
    try:
        log.record({"request_id": "a"})
        assert log.flush(timeout_s=15)  # a writer thread and an fsync on a busy disk
        assert json.loads(lines(path)[0])["request_id"] == "a"
    finally:
        log.close()
    with pytest.raises(ValueError, match="closed"):
        log.record({"request_id": "late"})


def test_missing_file_is_reported(tmp_path: Path) -> None:
    result = verify(tmp_path / "nope.log")
    assert not result.ok
    assert "cannot read" in result.reason


def test_second_writer_gets_its_own_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    first = AuditLog(path, clock=ManualClock())
    second = AuditLog(path, clock=ManualClock())
    try:
        assert first.path == path
        assert second.path == tmp_path / "audit.log.w1"
        first.record({"request_id": "a"})
        second.record({"request_id": "b"})
    finally:
        first.close()
        second.close()
    assert rotated_files(path) == [path]  # the .w1 chain is not a rotated file
    assert (verify(path).lines, verify(second.path).lines) == (1, 1)
    third = AuditLog(path, clock=ManualClock())  # the lock was released
    try:
        assert third.path == path
    finally:
        third.close()
