"""``meshlet route explain`` as a real process, on real files: the contract the
lead's demo and users' scripts rely on (exit codes, JSON keys)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.processes import run_meshlet

pytestmark = pytest.mark.integration

ROUTES = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: kserve, namespace: ml}
spec:
  parentRefs: [{group: "", kind: Service, name: inference}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2/models/resnet}}]
    backendRefs: [{name: inference-v1, weight: 80}, {name: inference-v2, weight: 20}]
    timeouts: {request: 30s}
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: inference-v1}]
"""


def test_explain_process_json(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    result = run_meshlet(
        "route",
        "explain",
        "--routing",
        str(routes),
        "--host",
        "inference.ml.svc.cluster.local:8080",
        "--method",
        "POST",
        "--path",
        "/v2/models/resnet/infer",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["route"] == "ml/kserve.rules[0]"
    assert out["model"] == "resnet"
    assert out["backends"] == [
        {"host": "inference-v1", "subset": "", "port": None, "weight": 80, "kind": "service"},
        {"host": "inference-v2", "subset": "", "port": None, "weight": 20, "kind": "service"},
    ]
    assert out["timeout_ms"] == 30_000
    assert out["retries"]["attempts"] == 0


def test_explain_process_config_error_exit_code(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES.replace("timeouts: {request: 30s}", "timeouts: {request: 30}"))
    result = run_meshlet("route", "explain", "--routing", str(routes), "--host", "inference")
    assert result.returncode == 2
    assert f"{routes}:9: spec.rules[0].timeouts.request" in result.stderr
