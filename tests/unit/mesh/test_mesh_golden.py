"""Golden metrics from Prometheus text: windows, resets, quantiles, success, mTLS."""

from __future__ import annotations

import math

import pytest

from meshlet.mesh.golden import Counts, counts_from, golden, parse_samples, quantile

BOUNDS = ("0.5", "1", "5", "10", "25", "+Inf")


def _scrape(ok: int, bad: int, plain: int, buckets: tuple[int, ...]) -> str:
    base = 'reporter="destination",source_principal="spiffe://td/ns/a/sa/b"'
    lines = [
        "# HELP istio_requests_total Requests handled.",
        "# TYPE istio_requests_total counter",
        f'istio_requests_total{{{base},response_code="200",'
        f'connection_security_policy="mutual_tls"}} {ok}',
        f'istio_requests_total{{{base},response_code="503",'
        f'connection_security_policy="mutual_tls"}} {bad}',
        f'istio_requests_total{{{base},response_code="403",connection_security_policy="none"}} '
        f"{plain}",
        'istio_requests_total{reporter="source",response_code="500"} 999',
    ]
    lines += [
        f'istio_request_duration_milliseconds_bucket{{{base},le="{le}"}} {n}'
        for le, n in zip(BOUNDS, buckets, strict=True)
    ]
    return "\n".join(lines) + "\n"


def test_parse_samples_reads_labels_with_escapes() -> None:
    (sample,) = parse_samples('m{a="x\\"y",b="z"} 3.5\n# comment\n')
    assert sample == ("m", {"a": 'x"y', "b": "z"}, 3.5)


def test_counts_pick_the_reporter_and_classify_codes() -> None:
    c = counts_from(_scrape(90, 5, 5, (10, 50, 90, 99, 100, 100)), "destination")
    assert c.requests == 100
    assert c.failures == 5  # the 403 is not a failure
    assert c.denied == 5  # but it is counted as a denial
    assert c.mtls == 95
    assert c.buckets[math.inf] == 100
    assert counts_from(_scrape(1, 0, 0, (0,) * 6), "source").failures == 999


def test_window_subtracts_and_survives_a_counter_reset() -> None:
    early = counts_from(_scrape(10, 0, 0, (5, 10, 10, 10, 10, 10)), "destination")
    late = counts_from(_scrape(30, 10, 0, (5, 20, 40, 40, 40, 40)), "destination")
    w = late.minus(early)
    assert (w.requests, w.failures, w.mtls) == (30, 10, 30)
    assert w.buckets[1.0] == 10
    reset = early.minus(late)  # the sidecar restarted: its counters went down
    assert reset.requests == 10
    assert reset.buckets[math.inf] == 10


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        pytest.param(0.5, 1.0 + 4.0 * (50 - 40) / 50, id="p50-interpolated"),
        pytest.param(0.99, 10.0 + 15.0 * (99 - 95) / 4, id="p99"),
        pytest.param(0.2, 0.5 * 20 / 30, id="first-bucket-from-zero"),
    ],
)
def test_quantile_interpolates_like_histogram_quantile(q: float, expected: float) -> None:
    buckets = {0.5: 30.0, 1.0: 40.0, 5.0: 90.0, 10.0: 95.0, 25.0: 99.0, math.inf: 100.0}
    assert quantile(q, buckets) == pytest.approx(expected)


def test_quantile_in_the_overflow_bucket_answers_the_last_bound() -> None:
    assert quantile(0.99, {1.0: 10.0, 5.0: 10.0, math.inf: 100.0}) == 5.0
    assert quantile(0.5, {}) is None


def test_golden_row_and_empty_window() -> None:
    g = golden(Counts(requests=200, failures=2, mtls=200, buckets={5.0: 200, math.inf: 200}), 2.0)
    assert g.rate_per_s == 100
    assert g.success_rate == pytest.approx(0.99)
    assert g.denied_share == 0
    assert g.mtls_share == 1.0
    assert g.p50_ms == pytest.approx(2.5)
    empty = golden(Counts(), 2.0)
    assert (empty.success_rate, empty.p50_ms, empty.mtls_share) == (None, None, None)


def test_rows_group_replicas_by_workload_and_count_unreachable_sidecars() -> None:
    from meshlet.mesh.state import MeshState, ReplicaState
    from meshlet.mesh.status import rows

    def replica(name: str, workload: str, service: str | None) -> ReplicaState:
        return ReplicaState(
            name=name,
            workload=workload,
            service=service,
            namespace="ml",
            spiffe_id="spiffe://td/ns/ml/sa/x",
            app=None,
            inbound=None,
            outbound="127.0.0.1:1",
            admin="127.0.0.1:2",
            sidecar_pid=None,
            app_pid=None,
            directory="/tmp",
        )

    state = MeshState(
        pid=1,
        source="m.yaml",
        trust_domain="td",
        started_at=0.0,
        replicas=(
            replica("inf-0", "inf", "inf"),
            replica("inf-1", "inf", "inf"),
            replica("web-0", "web", None),
        ),
    )
    early = _scrape(10, 0, 0, (5, 10, 10, 10, 10, 10))
    late = _scrape(30, 10, 0, (5, 20, 40, 40, 40, 40))
    out = rows(
        state, {"inf-0": early, "inf-1": None}, {"inf-0": late, "inf-1": late, "web-0": None}, 2.0
    )
    inf, web = out
    assert (inf.workload, inf.direction, inf.meshed) == ("inf", "inbound", "2/2")
    # inf-0: 30 in the window; inf-1 had no earlier scrape: all of its 40 count
    assert inf.window.requests == 30 + 40
    assert inf.window.rate_per_s == 35
    assert inf.total_requests == 80
    assert (web.direction, web.meshed, web.window.success_rate) == ("outbound", "0/1", None)
