"""AccessLog's optional ``upstream_model``: written after FIELDS only when set,
escaped like every other string, so each line stays one valid JSON object."""

from __future__ import annotations

import json

import pytest

from meshlet.clock import ManualClock
from meshlet.telemetry.accesslog import FIELDS, OPTIONAL_FIELDS, AccessLog


def _line(upstream_model: str | None) -> tuple[bytes, dict[str, object]]:
    writes: list[bytes] = []
    log = AccessLog(writes.append, clock=ManualClock())
    log.record(
        start_wall=1_700_000_000.25, reporter="source", method="POST",
        path="/v1/chat/completions", protocol="HTTP/1.1", response_code=200,
        response_flags="-", request_bytes=12, response_bytes=34, duration_s=0.01,
        authority="inference", request_id="abc-1", user_agent="curl/8",
        source_address="127.0.0.1:5555", upstream_host="127.0.0.1:8080",
        source_principal="spiffe://cluster.local/ns/a/sa/b",
        destination_principal="spiffe://cluster.local/ns/ml/sa/inference", mtls=True,
        upstream_model=upstream_model,
    )  # fmt: skip
    log.close()
    (raw,) = writes
    assert raw.count(b"\n") == 1
    return raw, json.loads(raw)


@pytest.mark.parametrize(
    "model",
    [
        pytest.param("chat-lora-b", id="plain"),
        pytest.param('odd"name\\with\nescapes', id="escaped"),
        pytest.param("モデル", id="non-ascii"),
        pytest.param("", id="empty"),
    ],
)
def test_upstream_model_follows_the_fields_when_set(model: str) -> None:
    _, line = _line(model)
    assert tuple(line) == (*FIELDS, *OPTIONAL_FIELDS)
    assert line["upstream_model"] == model


def test_no_upstream_model_key_when_sent_as_asked() -> None:
    raw, line = _line(None)
    assert tuple(line) == FIELDS
    assert b"upstream_model" not in raw
