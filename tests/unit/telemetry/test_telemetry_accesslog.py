"""AccessLog: batched JSON lines, no query strings by default, flush rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshlet.clock import ManualClock
from meshlet.telemetry.accesslog import FIELDS, AccessLog


def _record(log: AccessLog, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "start_wall": 1_700_000_000.25,
        "reporter": "destination",
        "method": "POST",
        "path": "/v1/completions?api_key=SECRET",
        "protocol": "HTTP/1.1",
        "response_code": 200,
        "response_flags": "-",
        "request_bytes": 12,
        "response_bytes": 345,
        "duration_s": 0.0123456,
        "authority": "inference",
        "request_id": "abc-1",
        "user_agent": "curl/8",
        "source_address": "127.0.0.1:5555",
        "upstream_host": "127.0.0.1:8080",
        "source_principal": "spiffe://cluster.local/ns/a/sa/b",
        "destination_principal": "spiffe://cluster.local/ns/ml/sa/inference",
        "mtls": True,
    }
    fields.update(overrides)
    log.record(**fields)


class Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.writes.append(data)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for w in self.writes for line in w.splitlines()]


def test_records_are_buffered_until_the_batch_is_full() -> None:
    sink, clock = Sink(), ManualClock()
    log = AccessLog(sink, clock=clock, max_entries=3)
    _record(log)
    _record(log)
    assert sink.writes == []
    _record(log, response_code=503)
    assert len(sink.writes) == 1  # one write for the whole batch
    assert [line["response_code"] for line in sink.lines()] == [200, 200, 503]
    assert log.lines_written == 3


def test_line_format_and_query_redaction() -> None:
    sink = Sink()
    log = AccessLog(sink, clock=ManualClock())
    _record(log)
    log.flush()
    (line,) = sink.lines()
    assert tuple(line) == FIELDS
    assert line["path"] == "/v1/completions"
    assert "SECRET" not in sink.writes[0].decode()
    assert line["start_time"] == "2023-11-14T22:13:20.250+00:00"
    assert line["duration_ms"] == 12.346
    assert line["connection_security_policy"] == "mutual_tls"
    assert line["source_principal"] == "spiffe://cluster.local/ns/a/sa/b"


def test_query_kept_when_asked() -> None:
    sink = Sink()
    log = AccessLog(sink, clock=ManualClock(), include_query=True)
    _record(log, mtls=False)
    log.flush()
    (line,) = sink.lines()
    assert line["path"].endswith("?api_key=SECRET")
    assert line["connection_security_policy"] == "none"


def test_interval_flush_follows_the_clock() -> None:
    sink, clock = Sink(), ManualClock()
    log = AccessLog(sink, clock=clock, flush_interval_s=1.0)
    _record(log)
    clock.advance(0.5)
    log.maybe_flush()
    assert sink.writes == []
    clock.advance(0.6)
    log.maybe_flush()
    assert len(sink.lines()) == 1
    clock.advance(5)
    log.maybe_flush()  # nothing buffered: no empty write
    assert len(sink.writes) == 1


def test_close_flushes_and_drops_later_records(tmp_path: Path) -> None:
    target = tmp_path / "access.log"
    log = AccessLog.to_path(str(target), clock=ManualClock())
    _record(log)
    _record(log, method="GET")
    log.close()
    _record(log)
    log.flush()
    lines = target.read_text().splitlines()
    assert [json.loads(x)["method"] for x in lines] == ["POST", "GET"]


def test_write_errors_do_not_raise() -> None:
    def broken(_data: bytes) -> None:
        raise OSError(28, "No space left on device")

    log = AccessLog(broken, clock=ManualClock(), max_entries=1)
    _record(log)  # must not raise into the request path
    assert log.lines_written == 0


@given(
    user_agent=st.text(max_size=40),
    path=st.text(max_size=40).map(lambda s: "/" + s.replace("?", "")),
    authority=st.text(max_size=20),
)
def test_any_string_round_trips_through_json(user_agent: str, path: str, authority: str) -> None:
    sink = Sink()
    log = AccessLog(sink, clock=ManualClock())
    _record(log, user_agent=user_agent, path=path, authority=authority)
    log.flush()
    (line,) = sink.lines()
    assert (line["user_agent"], line["path"], line["authority"]) == (user_agent, path, authority)
    assert sink.writes[0].count(b"\n") == 1  # a newline in a value never splits the line


def test_numbers_and_time_format() -> None:
    sink = Sink()
    log = AccessLog(sink, clock=ManualClock())
    _record(log, start_wall=1_700_000_000.999, duration_s=2.0, request_bytes=0)
    _record(log, start_wall=1_700_000_001.0)
    log.flush()
    first, second = sink.lines()
    assert first["start_time"] == "2023-11-14T22:13:20.999+00:00"
    assert second["start_time"] == "2023-11-14T22:13:21.000+00:00"
    assert first["duration_ms"] == 2000.0
    assert first["bytes_received"] == 0


def test_wall_reads_the_injected_clock() -> None:
    clock = ManualClock(wall=1_700_000_123.5)
    assert AccessLog(Sink(), clock=clock).wall() == 1_700_000_123.5
