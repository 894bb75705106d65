"""WorkerMerge: N workers' scrapes read as one sidecar's, and never go backwards."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from meshlet.telemetry.exposition import PER_WORKER_FAMILY, WorkerMerge, parse, render
from meshlet.telemetry.metrics import GoldenMetrics

CLIENT = "spiffe://cluster.local/ns/apps/sa/client"
SERVER = "spiffe://cluster.local/ns/ml/sa/inference"

Sample = tuple[str, tuple[tuple[str, str], ...]]


def _request(m: GoldenMetrics, code: int, duration_s: float, size: int) -> None:
    m.request(
        reporter="destination", source_principal=CLIENT, destination_principal=SERVER,
        destination_service="inference", request_protocol="http", response_code=code,
        mtls=True, duration_s=duration_s, request_bytes=size, response_bytes=size * 3,
    )  # fmt: skip


def _samples(text: bytes, *, skip: tuple[str, ...] = ()) -> dict[Sample, float]:
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name in skip:
            continue
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(text: bytes, name: str, **labels: str) -> float | None:
    want = tuple(sorted(labels.items()))
    return _samples(text).get((name, want))


REQUEST = st.tuples(
    st.integers(0, 1),  # which worker
    st.sampled_from([200, 404, 503]),
    st.floats(0.0, 5.0, allow_nan=False),
    st.integers(0, 10**7),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(REQUEST, max_size=40))
def test_two_workers_merge_to_what_one_process_would_report(
    requests: list[tuple[int, int, float, int]],
) -> None:
    workers = [GoldenMetrics(workload="inference", namespace="ml") for _ in range(2)]
    single = GoldenMetrics(workload="inference", namespace="ml")
    for worker, code, duration_s, size in requests:
        _request(workers[worker], code, duration_s, size)
        _request(single, code, duration_s, size)
    merged = WorkerMerge().merge({i: (100 + i, m.render()) for i, m in enumerate(workers)})
    got = _samples(merged, skip=("meshlet_worker_requests",))
    want = _samples(single.render())
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
    per_worker = [_value(merged, PER_WORKER_FAMILY, worker=str(i)) for i in range(2)]
    assert per_worker == [sum(1 for r in requests if r[0] == i) for i in range(2)]


def _gauges(expiry: float, outstanding: int, rss: int, worker: int) -> bytes:
    return (
        "# TYPE meshlet_certificate_expiry_seconds gauge\n"
        f"meshlet_certificate_expiry_seconds {expiry}\n"
        "# TYPE meshlet_endpoint_outstanding_requests gauge\n"
        f'meshlet_endpoint_outstanding_requests{{cluster="c",endpoint="e"}} {outstanding}\n'
        "# TYPE meshlet_process_resident_memory_bytes gauge\n"
        f'meshlet_process_resident_memory_bytes{{worker="{worker}"}} {rss}\n'
    ).encode()


def test_gauges_sum_except_certificate_expiry_which_takes_the_soonest() -> None:
    merged = WorkerMerge().merge(
        {0: (1, _gauges(90.5, 2, 1000, 0)), 1: (2, _gauges(30.25, 3, 2000, 1))}
    )
    assert _value(merged, "meshlet_certificate_expiry_seconds") == 30.25
    assert _value(merged, "meshlet_endpoint_outstanding_requests", cluster="c", endpoint="e") == 5
    assert _value(merged, "meshlet_process_resident_memory_bytes", worker="0") == 1000
    assert _value(merged, "meshlet_process_resident_memory_bytes", worker="1") == 2000


def _counter(n: int, *, rss: int = 7) -> bytes:
    return (
        "# HELP istio_requests_total Requests handled.\n"
        "# TYPE istio_requests_total counter\n"
        f'istio_requests_total{{response_code="200"}} {n}\n'
        "# TYPE meshlet_process_resident_memory_bytes gauge\n"
        f"meshlet_process_resident_memory_bytes {rss}\n"
    ).encode()


def test_a_worker_that_does_not_answer_keeps_its_counters_but_not_its_gauges() -> None:
    merge = WorkerMerge()
    first = merge.merge({0: (10, _counter(5)), 1: (11, _counter(7))})
    assert _value(first, "istio_requests_total", response_code="200") == 12
    assert _value(first, "meshlet_process_resident_memory_bytes") == 14
    second = merge.merge({0: (10, _counter(6)), 1: None})
    assert _value(second, "istio_requests_total", response_code="200") == 13
    assert _value(second, "meshlet_process_resident_memory_bytes") == 7  # worker 0 only
    assert _value(second, PER_WORKER_FAMILY, worker="1") == 7


@pytest.mark.parametrize(
    ("restarted_with", "expected"),
    [
        pytest.param(0, 9, id="new-process-starts-from-zero"),
        pytest.param(2, 11, id="new-process-counted-some"),
    ],
)
def test_a_restarted_worker_never_makes_a_counter_go_backwards(
    restarted_with: int, expected: int
) -> None:
    merge = WorkerMerge()
    merge.merge({0: (10, _counter(5)), 1: (11, _counter(4))})
    # Worker 1 comes back as a new process (pid 12) whose counters restart.
    after = merge.merge({0: (10, _counter(5)), 1: (12, _counter(restarted_with))})
    assert _value(after, "istio_requests_total", response_code="200") == expected
    assert _value(after, PER_WORKER_FAMILY, worker="1") == 4 + restarted_with
    later = merge.merge({0: (10, _counter(5)), 1: (12, _counter(restarted_with + 1))})
    assert _value(later, "istio_requests_total", response_code="200") == expected + 1


def test_parse_and_render_round_trip_a_golden_scrape() -> None:
    m = GoldenMetrics()
    _request(m, 200, 0.002, 100)
    m.tls_handshake_failure("bad_certificate")
    text = m.render()
    assert _samples(render(parse(text).values())) == _samples(text)


def test_label_values_with_spaces_and_braces_stay_one_series() -> None:
    text = b'# TYPE x_total counter\nx_total{path="/a b}c",q="\\"d\\""} 2\n'
    merged = WorkerMerge().merge({0: (1, text), 1: (2, text)})
    assert _value(merged, "x_total", path="/a b}c", q='"d"') == 4


def test_the_parents_extra_families_merge_in() -> None:
    extra = (
        b"# TYPE meshlet_process_resident_memory_bytes gauge\n"
        b'meshlet_process_resident_memory_bytes{worker="parent"} 3\n'
    )
    merged = WorkerMerge().merge({0: (1, _gauges(1.0, 0, 10, 0))}, extra=extra)
    values: dict[str, Any] = {
        w: _value(merged, "meshlet_process_resident_memory_bytes", worker=w)
        for w in ("0", "parent")
    }
    assert values == {"0": 10, "parent": 3}
