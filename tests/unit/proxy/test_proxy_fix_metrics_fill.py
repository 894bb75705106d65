"""GoldenMetrics.fill_workload names the local workload only where it is unknown."""

from __future__ import annotations

from meshlet.telemetry.metrics import GoldenMetrics


def _labels(metrics: GoldenMetrics) -> str:
    metrics.request(
        reporter="destination",
        source_principal="spiffe://td/ns/apps/sa/client",
        destination_principal="spiffe://td/ns/ml/sa/inference",
        destination_service="inference",
        request_protocol="http",
        response_code=200,
        mtls=True,
        duration_s=0.01,
        request_bytes=1,
        response_bytes=1,
        response_flags="-",
    )
    (line,) = [
        x for x in metrics.render().decode().splitlines() if x.startswith("istio_requests_total{")
    ]
    return line


def test_fill_sets_unknown_labels() -> None:
    metrics = GoldenMetrics()
    metrics.fill_workload(workload="inference", namespace="prod")
    line = _labels(metrics)
    assert 'destination_workload="inference"' in line
    assert 'destination_workload_namespace="prod"' in line


def test_fill_keeps_labels_the_bootstrap_named() -> None:
    metrics = GoldenMetrics(workload="explicit", namespace="team")
    metrics.fill_workload(workload="inference", namespace="ml")
    line = _labels(metrics)
    assert 'destination_workload="explicit"' in line
    assert 'destination_workload_namespace="team"' in line
