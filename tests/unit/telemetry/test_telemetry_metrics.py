"""GoldenMetrics: Istio names and labels, correct histograms, parseable text."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from meshlet.telemetry.metrics import DURATION_BUCKETS_MS, GoldenMetrics

CLIENT = "spiffe://cluster.local/ns/apps/sa/client"
SERVER = "spiffe://cluster.local/ns/ml/sa/inference"


def _req(m: GoldenMetrics, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "reporter": "destination",
        "source_principal": CLIENT,
        "destination_principal": SERVER,
        "destination_service": "inference",
        "request_protocol": "http",
        "response_code": 200,
        "mtls": True,
        "duration_s": 0.003,
        "request_bytes": 10,
        "response_bytes": 1024,
    }
    fields.update(overrides)
    m.request(**fields)


def _samples(m: GoldenMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def test_requests_total_carries_istio_labels() -> None:
    m = GoldenMetrics(workload="inference-v1", namespace="ml")
    _req(m)
    _req(m)
    _req(m, response_code=503, response_flags="UF")
    rows = _samples(m)["istio_requests_total"]
    by_code = {labels["response_code"]: (labels, value) for labels, value in rows}
    labels, value = by_code["200"]
    assert value == 2
    assert labels["reporter"] == "destination"
    assert labels["source_principal"] == CLIENT
    assert labels["destination_principal"] == SERVER
    assert labels["destination_service"] == "inference"
    assert labels["destination_workload"] == "inference-v1"
    assert labels["destination_workload_namespace"] == "ml"
    assert labels["source_workload_namespace"] == "apps"
    assert labels["connection_security_policy"] == "mutual_tls"
    assert labels["request_protocol"] == "http"
    assert by_code["503"][1] == 1
    assert by_code["503"][0]["response_flags"] == "UF"


def test_plaintext_is_reported_as_none_policy_and_unknown_principal() -> None:
    m = GoldenMetrics()
    _req(m, mtls=False, source_principal="")
    ((labels, _),) = _samples(m)["istio_requests_total"]
    assert labels["connection_security_policy"] == "none"
    assert labels["source_principal"] == "unknown"
    assert labels["source_workload_namespace"] == "unknown"


def test_duration_histogram_is_cumulative_with_istio_bounds() -> None:
    m = GoldenMetrics()
    for seconds in (0.0004, 0.001, 0.003, 0.003, 7200.0):
        _req(m, duration_s=seconds)
    rows = _samples(m)["istio_request_duration_milliseconds_bucket"]
    by_le = {labels["le"]: value for labels, value in rows}
    assert len(by_le) == len(DURATION_BUCKETS_MS) + 1
    assert by_le["0.5"] == 1  # 0.4 ms
    assert by_le["1"] == 2  # le is inclusive: 1 ms lands in le="1"
    assert by_le["5"] == 4
    assert by_le["3600000"] == 4  # two hours only in +Inf
    assert by_le["+Inf"] == 5
    ((_, total),) = _samples(m)["istio_request_duration_milliseconds_sum"]
    assert total == pytest.approx(0.4 + 1 + 3 + 3 + 7_200_000)
    ((_, count),) = _samples(m)["istio_request_duration_milliseconds_count"]
    assert count == 5


def test_byte_histograms() -> None:
    m = GoldenMetrics()
    _req(m, request_bytes=0, response_bytes=1024)
    _req(m, request_bytes=100, response_bytes=5_000_000)
    req = {labels["le"]: v for labels, v in _samples(m)["istio_request_bytes_bucket"]}
    resp = {labels["le"]: v for labels, v in _samples(m)["istio_response_bytes_bucket"]}
    assert req["1"] == 1
    assert req["100"] == 2
    assert resp["1000"] == 0
    assert resp["10000"] == 1
    assert resp["10000000"] == 2
    ((_, total),) = _samples(m)["istio_response_bytes_sum"]
    assert total == 5_001_024


def test_tcp_counters() -> None:
    m = GoldenMetrics()
    labels: dict[str, Any] = {
        "reporter": "destination",
        "source_principal": CLIENT,
        "destination_principal": SERVER,
        "destination_service": "grpc.ml.svc.cluster.local",
        "mtls": True,
    }
    m.tcp_opened(**labels)
    m.tcp_bytes(300, 20, **labels)
    m.tcp_bytes(700, 5, **labels)
    m.tcp_closed(**labels)
    samples = _samples(m)
    ((row, value),) = samples["istio_tcp_sent_bytes_total"]
    assert value == 1000
    assert row["request_protocol"] == "tcp"
    assert row["destination_service_name"] == "grpc"
    assert row["destination_service_namespace"] == "ml"
    assert samples["istio_tcp_received_bytes_total"][0][1] == 25
    assert samples["istio_tcp_connections_opened_total"][0][1] == 1
    assert samples["istio_tcp_connections_closed_total"][0][1] == 1
    assert m.tcp_totals() == {"opened": 1, "closed": 1, "sent": 1000, "received": 25}


def test_error_counters() -> None:
    m = GoldenMetrics()
    m.tls_handshake_failure("no_client_cert")
    m.tls_handshake_failure("no_client_cert")
    m.upstream_error("connect")
    samples = _samples(m)
    assert samples["meshlet_tls_handshake_failures_total"] == [({"reason": "no_client_cert"}, 2)]
    assert samples["meshlet_upstream_errors_total"] == [({"kind": "connect"}, 1)]
    assert m.handshake_failures() == {"no_client_cert": 2}


def test_label_values_are_escaped() -> None:
    m = GoldenMetrics()
    _req(m, destination_service='we"ird\\svc\nx')
    ((labels, _),) = _samples(m)["istio_requests_total"]
    assert labels["destination_service"] == 'we"ird\\svc\nx'


def test_request_count_filters() -> None:
    m = GoldenMetrics()
    _req(m)
    _req(m, reporter="source", response_code=502)
    assert m.request_count() == 2
    assert m.request_count(reporter="source") == 1
    assert m.request_count(response_code=200, source_principal=CLIENT) == 1
    assert m.request_count(destination_principal="spiffe://x/ns/y/sa/z") == 0


def test_series_cap_folds_into_overflow() -> None:
    m = GoldenMetrics(max_series=2)
    for code in (200, 201, 202, 203):
        _req(m, response_code=code)
    samples = _samples(m)
    codes = sorted(labels["response_code"] for labels, _ in samples["istio_requests_total"])
    assert codes == ["0", "200", "201"]
    assert samples["meshlet_metrics_overflow_total"][0][1] == 2
    assert m.request_count() == 4


def test_empty_render_is_valid() -> None:
    names = {f.name for f in text_string_to_metric_families(GoldenMetrics().render().decode())}
    assert "istio_requests" in names
    assert "meshlet_tls_handshake_failures" in names


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["source", "destination"]),
            st.sampled_from([200, 404, 503]),
            st.floats(min_value=0, max_value=5000, allow_nan=False),
            st.integers(min_value=0, max_value=10**10),
        ),
        max_size=40,
    )
)
def test_rendered_text_agrees_with_a_naive_count(
    events: list[tuple[str, int, float, int]],
) -> None:
    m = GoldenMetrics()
    for reporter, code, seconds, size in events:
        _req(m, reporter=reporter, response_code=code, duration_s=seconds, response_bytes=size)
    samples = _samples(m)
    totals: dict[tuple[str, str], float] = {}
    for labels, value in samples.get("istio_requests_total", []):
        totals[(labels["reporter"], labels["response_code"])] = value
    expected: dict[tuple[str, str], float] = {}
    for reporter, code, _, _ in events:
        expected[(reporter, str(code))] = expected.get((reporter, str(code)), 0) + 1
    assert totals == expected
    # Every histogram is cumulative and ends at its count.
    for family in ("istio_request_duration_milliseconds", "istio_response_bytes"):
        series: dict[tuple[str, str], list[float]] = {}
        for labels, value in samples.get(f"{family}_bucket", []):
            series.setdefault((labels["reporter"], labels["response_code"]), []).append(value)
        for key, values in series.items():
            assert values == sorted(values)
            assert values[-1] == expected[key]
