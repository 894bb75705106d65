"""Model names (KServe paths, bounded JSON peek), admission/shedding, stream deadlines,
body limits."""

from __future__ import annotations

import json

import pytest

from meshlet.clock import ManualClock
from meshlet.config.inference import Criticality
from meshlet.traffic.inference import Admit, admit, pick_weighted
from meshlet.traffic.model_name import ModelFieldScanner, ScanState, model_from_path
from meshlet.traffic.streaming import BodyLimit, Expiry, StreamDeadline


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v2/models/resnet/infer", "resnet"),
        ("/v2/models/resnet/versions/3/infer", "resnet"),
        ("/v2/models/resnet", "resnet"),
        ("/v2/models/resnet/ready", "resnet"),
        ("/v2/models", None),
        ("/v1/chat/completions", None),
        ("/v2/models/a/b/c/infer", None),
    ],
)
def test_model_from_kserve_path(path: str, model: str | None) -> None:
    assert model_from_path(path) == model


def scan(body: bytes, chunk: int, limit: int = 64 * 1024) -> tuple[ScanState, str | None]:
    s = ModelFieldScanner(limit)
    for i in range(0, len(body), chunk):
        r = s.feed(body[i : i + chunk], end=i + chunk >= len(body))
        if r.state is not ScanState.NEED_MORE:
            return r.state, r.model
    r = s.feed(b"", end=True)
    return r.state, r.model


OPENAI = json.dumps(
    {
        "messages": [{"role": "user", "content": 'say "model": "wrong" \\ {[('}],
        "options": {"model": "nested-wrong"},
        "model": "llama-3-8b",
        "stream": True,
    }
).encode()


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 10_000])
def test_scanner_finds_top_level_model_in_any_chunking(chunk: int) -> None:
    assert scan(OPENAI, chunk) == (ScanState.FOUND, "llama-3-8b")


def test_scanner_decodes_json_escapes() -> None:
    assert scan(b'{"model": "caf\\u00e9\\"x"}', 3) == (ScanState.FOUND, 'caf\u00e9"x')


@pytest.mark.parametrize(
    ("body", "state"),
    [
        pytest.param(b'{"prompt": "hi"}', ScanState.ABSENT, id="absent"),
        pytest.param(b'{"model": 7}', ScanState.ABSENT, id="not-a-string"),
        pytest.param(b"[1, 2]", ScanState.GAVE_UP, id="not-an-object"),
        pytest.param(b"", ScanState.ABSENT, id="empty"),
    ],
)
def test_scanner_gives_up_cleanly(body: bytes, state: ScanState) -> None:
    assert scan(body, 4)[0] is state


def test_scanner_stops_at_its_bound_without_buffering_more() -> None:
    body = b'{"prompt": "' + b"x" * 5000 + b'", "model": "late"}'
    assert scan(body, 512, limit=1024) == (ScanState.GAVE_UP, None)
    assert scan(body, 512, limit=8192) == (ScanState.FOUND, "late")
    s = ModelFieldScanner(16)
    s.feed(b'{"prompt": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa')
    assert len(s._buf) == 0  # released on giving up


def test_scanner_after_result_is_sticky() -> None:
    s = ModelFieldScanner()
    assert s.feed(b'{"model":"a"}').model == "a"
    assert s.feed(b"more").model == "a"


@pytest.mark.parametrize(
    ("criticality", "outstanding", "expected"),
    [
        pytest.param(Criticality.SHEDDABLE, [4, 4], Admit.SHED, id="all-full-sheddable"),
        pytest.param(Criticality.STANDARD, [4, 4], Admit.QUEUE, id="all-full-standard"),
        pytest.param(Criticality.CRITICAL, [4, 4], Admit.QUEUE, id="all-full-critical"),
        pytest.param(Criticality.SHEDDABLE, [4, 3], Admit.SEND, id="one-has-room"),
    ],
)
def test_admission(criticality: Criticality, outstanding: list[int], expected: Admit) -> None:
    assert admit(criticality, outstanding, 4) is expected


def test_admission_without_limit_never_sheds() -> None:
    assert admit(Criticality.SHEDDABLE, [10**6], None) is Admit.SEND


def test_criticality_from_objective_priority() -> None:
    assert Criticality.from_priority(-1) is Criticality.SHEDDABLE
    assert Criticality.from_priority(0) is Criticality.STANDARD
    assert Criticality.from_priority(3) is Criticality.CRITICAL


def test_pick_weighted_intervals() -> None:
    items = [("a", 1), ("b", 3)]
    assert [pick_weighted(items, x) for x in (0.0, 0.24, 0.25, 0.99)] == ["a", "a", "b", "b"]
    assert pick_weighted([("a", 0)], 0.5) is None


def test_stream_survives_total_length_when_chunks_keep_coming() -> None:
    clock = ManualClock(monotonic=0.0)
    d = StreamDeadline(started=clock.monotonic(), total_s=None, idle_s=5.0)
    for _ in range(600):  # 60 s of tokens every 100 ms
        clock.advance(0.1)
        assert d.expired(clock.monotonic()) is None
        d.on_progress(clock.monotonic())
    clock.advance(4.9)
    assert d.expired(clock.monotonic()) is None
    clock.advance(0.1)
    assert d.expired(clock.monotonic()) is Expiry.IDLE


def test_total_timeout_is_separate_from_idle() -> None:
    d = StreamDeadline(started=0.0, total_s=10.0, idle_s=5.0)
    d.on_progress(8.0)
    assert d.next_deadline() == 10.0
    assert d.expired(10.0) is Expiry.TOTAL
    assert StreamDeadline(started=0.0, total_s=None, idle_s=None).next_deadline() is None


def test_body_limit_counts_while_streaming() -> None:
    limit = BodyLimit(max_bytes=10)
    assert limit.add(6)
    assert limit.add(4)
    assert not limit.add(1)
    assert not BodyLimit(max_bytes=10).declared_ok(11)
    assert BodyLimit(max_bytes=None).add(10**9)
