"""``meshlet route explain`` through the real CLI entry point (in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshlet.cli.main import main

ROUTES = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inf, namespace: ml}
spec:
  hosts: [inference]
  http:
  - match: [{headers: {x-model-name: {exact: llama}}}]
    timeout: 120s
    retries: {attempts: 1, perTryTimeout: 60s, retryOn: "gateway-error,reset"}
    route: [{destination: {host: inference, subset: v2}}]
  - match: [{uri: {prefix: /v1/}}]
    route:
    - {destination: {host: inference, subset: v1}, weight: 90}
    - {destination: {host: inference, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inf, namespace: ml}
spec:
  host: inference
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES)
    return path


def test_explain_json_contract(routes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "route",
            "explain",
            "--routing",
            str(routes),
            "--host",
            "inference",
            "--method",
            "POST",
            "--path",
            "/v1/completions",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["route"] == "ml/inf.http[1]"
    assert [(b["host"], b["subset"], b["weight"]) for b in out["backends"]] == [
        ("inference", "v1", 90),
        ("inference", "v2", 10),
    ]
    assert out["timeout_ms"] is None
    assert out["retries"]["attempts"] == 2


def test_explain_reads_the_model_from_the_body(
    routes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"messages": [], "model": "llama"}))
    code = main(
        [
            "route",
            "explain",
            "--routing",
            str(routes),
            "--host",
            "inference",
            "--method",
            "POST",
            "--path",
            "/v1/chat/completions",
            "--body-file",
            str(body),
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["model"] == "llama"
    assert out["route"] == "ml/inf.http[0]"
    assert out["timeout_ms"] == 120_000
    assert out["retries"] == {
        "attempts": 1,
        "per_try_timeout_ms": 60_000,
        "retry_on": ["gateway-error", "reset"],
    }


def test_explain_text_and_no_match(routes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "route",
                "explain",
                "--routing",
                str(routes),
                "--host",
                "inference",
                "--path",
                "/v2/models/llama/infer",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "route:    ml/inf.http[0]" in text
    assert "inference subset=v2 weight=100" in text
    assert (
        main(
            [
                "route",
                "explain",
                "--routing",
                str(routes),
                "--host",
                "inference",
                "--path",
                "/other",
            ]
        )
        == 1
    )
    assert "no route of inference matches GET /other" in capsys.readouterr().out


def test_explain_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(ROUTES.replace("timeout: 120s", "timeout: 120s\n    corsPolicy: {}"))
    assert main(["route", "explain", "--routing", str(bad), "--host", "inference"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:9: spec.http[0].corsPolicy: unknown field" in err
    assert (
        main(["route", "explain", "--routing", str(bad), "--host", "x", "--header", "novalue"]) == 2
    )
