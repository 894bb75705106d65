"""The access log names the model sent upstream when an InferenceModel chose a
target: two real ``meshlet proxy`` processes (source with ``outbound.routing``
and the access log to a file -> mTLS -> destination -> echo app). A request for
``chat`` goes out as ``chat-lora-b`` and its line says ``upstream_model``; a
request naming no InferenceModel keeps its model and its line has no such key."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from tests.support.apps import echo_app
from tests.support.inference_yaml import inference_model, pool_routing
from tests.support.pki import issue, make_ca, spiffe
from tests.support.processes import (
    inbound_bootstrap,
    outbound_bootstrap,
    running_proxy,
    write_bootstrap,
)

from meshlet.telemetry.accesslog import FIELDS

pytestmark = pytest.mark.integration

WORKLOAD_ID = spiffe("ml", "inference")
CLIENT_ID = spiffe("apps", "client")
T = 15.0  # bound of one request through two processes on a loaded machine

ROUTING = pool_routing(
    inference_model("chat", "Critical", targets="[{name: chat-lora-b, weight: 100}]")
)


def chat_body(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}).encode()


async def test_access_log_names_the_target_model_sent_upstream(tmp_path: Path) -> None:
    ca = make_ca(tmp_path)
    server_files = issue(ca, tmp_path / "server", WORKLOAD_ID)
    client_files = issue(ca, tmp_path / "client", CLIENT_ID)
    log_path = tmp_path / "access.log"
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTING)
    async with echo_app() as app:
        destination_path = write_bootstrap(
            tmp_path / "destination.yaml",
            inbound_bootstrap(server_files, app.port, admin=None, mtls="STRICT"),
        )
        async with running_proxy(destination_path) as destination:
            _, inbound_port = destination.address("inbound")
            endpoint = {
                "address": f"127.0.0.1:{inbound_port}",
                "identity": WORKLOAD_ID,
                "labels": {"app": "vllm"},
            }
            source_config = outbound_bootstrap(
                client_files, {"inference": {"endpoints": [endpoint]}}, admin=None
            )
            source_config["outbound"]["routing"] = [str(routes)]
            source_config["access_log"] = {"path": str(log_path)}
            source_path = write_bootstrap(tmp_path / "source.yaml", source_config)
            async with running_proxy(source_path) as source:
                host, port = source.address("outbound")
                async with httpx.AsyncClient(proxy=f"http://{host}:{port}", timeout=T) as client:
                    url = "http://inference/v1/chat/completions"
                    headers = {"content-type": "application/json"}
                    retargeted = await asyncio.wait_for(
                        client.post(url, headers=headers, content=chat_body("chat")), T
                    )
                    as_asked = await asyncio.wait_for(
                        client.post(url, headers=headers, content=chat_body("embed-small")), T
                    )
                assert (retargeted.status_code, as_asked.status_code) == (200, 200)
                # The app read the rewritten body: longer by "-lora-b".
                assert retargeted.json()["body_len"] == len(chat_body("chat-lora-b"))
                assert as_asked.json()["body_len"] == len(chat_body("embed-small"))
                assert await source.stop() == 0  # a clean stop flushes the access log
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [line["reporter"] for line in lines] == ["source", "source"]
    first, second = lines
    assert tuple(first) == (*FIELDS, "upstream_model")
    assert first["upstream_model"] == "chat-lora-b"
    assert first["response_code"] == 200
    assert tuple(second) == FIELDS  # sent as asked: no upstream_model key
