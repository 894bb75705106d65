"""The reference inference server as a real process, spoken to by real HTTP clients."""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

pytestmark = pytest.mark.integration

STARTUP_TIMEOUT_S = 30.0


class Workload:
    def __init__(self, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshlet.workloads.inference", "--port", "0", *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.port = 0
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"workload exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            if "listening on" in line:
                self.port = int(line.rsplit(":", 1)[1])
            if "ready" in line:
                return
        raise AssertionError("workload did not become ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=5)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Workload]:
    w = Workload("--backend", "numpy", "--model-version", "v7", "--token-interval-ms", "40")
    yield w
    assert w.stop() == 0


@pytest.fixture
def client(server: Workload) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


def _image_body(n: int) -> dict[str, object]:
    raw = bytes(224 * 224 * 3)
    data = [base64.b64encode(raw).decode()] * n
    return {"inputs": [{"name": "image", "shape": [n], "datatype": "BYTES", "data": data}]}


def test_health_and_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2/models/resnet-small").json()
    assert meta["versions"] == ["v7"]
    assert meta["platform"] == "numpy"
    assert client.get("/v2/models/other").status_code == 404


def test_infer_base64_batch_reports_version_and_compute_time(client: httpx.Client) -> None:
    r = client.post(
        "/v2/models/resnet-small/infer", json=_image_body(4), headers={"x-request-id": "abc"}
    )
    assert r.status_code == 200
    assert r.headers["x-model-version"] == "v7"
    assert float(r.headers["x-compute-ms"]) > 0
    body = r.json()
    assert body["id"] == "abc"
    assert body["outputs"][0]["shape"] == [4, 10]
    assert len(body["outputs"][1]["data"]) == 4
    assert body["parameters"]["compute_ms"] == pytest.approx(
        float(r.headers["x-compute-ms"]), abs=0.01
    )


def test_bad_requests_get_400_and_405(client: httpx.Client) -> None:
    r = client.post("/v2/models/resnet-small/infer", content=b"{nope")
    assert r.status_code == 400
    assert "JSON" in r.json()["error"]
    assert client.get("/v2/models/resnet-small/infer").status_code == 405
    assert client.get("/nowhere").status_code == 404


def test_chat_completion_whole(client: httpx.Client) -> None:
    r = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    )
    body = r.json()
    assert r.status_code == 200
    assert body["usage"]["completion_tokens"] == 3
    assert len(body["choices"][0]["message"]["content"].split()) == 3


def test_chat_stream_delivers_tokens_as_generated(server: Workload) -> None:
    arrivals: list[float] = []
    events: list[str] = []
    with (
        httpx.Client(timeout=10.0) as c,
        c.stream(
            "POST",
            f"{server.url}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 20, "stream": True},
        ) as r,
    ):
        assert r.headers["content-type"] == "text/event-stream"
        for line in r.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1]]
    assert sum("content" in d for d in deltas) == 20
    # 20 tokens at 40 ms: the role chunk must arrive well before the last token,
    # which it would not if the body were buffered (0.8 s of generation; half of
    # it may go to a loaded machine stalling this reader).
    assert arrivals[-1] - arrivals[0] > 0.4


def test_embeddings(client: httpx.Client) -> None:
    r = client.post("/v1/embeddings", json={"input": ["a b", "c"]})
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert len(data[0]["embedding"]) == 64
    assert client.post("/v1/embeddings", json={"input": 3}).status_code == 400


def test_pipelined_requests_are_answered_in_order(server: Workload) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"404", b"200"]


def test_malformed_http_gets_400_and_close(server: Workload) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_client(server: Workload) -> None:
    out = subprocess.run(
        ["curl", "-s", "-i", "--max-time", "10", f"{server.url}/v2/health/ready"],
        capture_output=True,
        text=True,
        timeout=15,
        check=True,
    ).stdout
    assert out.startswith("HTTP/1.1 200")
    assert "x-model-version: v7" in out


def test_fail_rate_and_delay_on_cue() -> None:
    w = Workload("--backend", "numpy", "--fail-rate", "1", "--delay-ms", "50")
    try:
        with httpx.Client(base_url=w.url, timeout=10.0) as c:
            start = time.monotonic()
            r = c.post("/v2/models/resnet-small/infer", json=_image_body(1))
            assert time.monotonic() - start >= 0.05
            assert r.status_code == 503
            assert r.headers["x-injected-failure"] == "1"
            assert c.get("/v2/health/ready").status_code == 200  # health is never failed
    finally:
        assert w.stop() == 0


def test_bad_flag_exits_2_without_listening() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "meshlet.workloads.inference", "--port", "0", "--fail-rate", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--fail-rate" in proc.stderr
    assert "listening" not in proc.stdout


def test_client_leaving_mid_stream_leaves_the_server_healthy(server: Workload) -> None:
    body = json.dumps(
        {"messages": [{"role": "user", "content": "x"}], "max_tokens": 500, "stream": True}
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
    # 500 tokens at 40 ms would take 20 s; the server must not be stuck on them.
    with httpx.Client(base_url=server.url, timeout=5.0) as c:
        assert all(c.get("/v2/health/live").status_code == 200 for _ in range(20))
