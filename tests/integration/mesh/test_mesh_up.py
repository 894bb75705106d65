"""``meshlet up`` end to end: real sidecars, real mTLS, real workloads, clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.processes import gone, run_meshlet

pytestmark = pytest.mark.integration

UP_TIMEOUT_S = 60.0

MESH = """\
trust_domain: cluster.local
services:
  inference:
    namespace: ml
    workloads:
      - command: >-
          {python} -m meshlet.workloads.inference --port {port} --backend numpy
          --instance {name} --model-version v1
        replicas: 2
        readiness: /v2/health/ready
        labels: {version: v1}
clients:
  frontend:
    namespace: web
    command: ["{python}", "-c", "import time; print('frontend up', flush=True); time.sleep(600)"]
"""


class Mesh:
    def __init__(self, directory: Path, text: str) -> None:
        self.dir = directory
        (directory / "mesh.yaml").write_text(text)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshlet", "up", "mesh.yaml"],
            cwd=directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.output: list[str] = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + UP_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"meshlet up exited: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            self.output.append(line)
            if "mesh is up" in line:
                return
        raise AssertionError("meshlet up did not come up")

    def state(self) -> dict:  # type: ignore[type-arg]
        data: dict = json.loads((self.dir / ".meshlet" / "mesh.json").read_text())  # type: ignore[type-arg]
        return data

    def replica(self, name: str) -> dict:  # type: ignore[type-arg]
        return next(r for r in self.state()["replicas"] if r["name"] == name)

    def pids(self) -> list[int]:
        return [p for r in self.state()["replicas"] for p in (r["sidecar_pid"], r["app_pid"]) if p]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path, MESH)
    yield m
    m.stop()


def test_up_serves_over_mtls_and_stops_with_no_orphans(mesh: Mesh) -> None:
    table = "".join(mesh.output)
    assert "spiffe://cluster.local/ns/ml/sa/inference" in table
    assert "spiffe://cluster.local/ns/web/sa/frontend" in table
    frontend = mesh.replica("frontend-0")
    proxy = f"http://{frontend['outbound']}"
    seen = set()
    with httpx.Client(proxy=proxy, timeout=10.0) as client:
        for _ in range(8):
            r = client.get("http://inference/v2/health/ready")
            assert r.status_code == 200
            assert r.headers["x-model-version"] == "v1"
            seen.add(r.headers["x-served-by"])
    assert seen
    assert seen <= {"inference-0", "inference-1"}
    # STRICT: the inbound listener refuses plaintext.
    host, port = mesh.replica("inference-0")["inbound"].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = s.recv(100)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/1.1 200")
    pids = mesh.pids()
    assert len(pids) == 6
    assert mesh.stop() == 0
    _wait_gone(pids)
    assert [p for p in pids if not gone(p)] == []
    assert not (mesh.dir / ".meshlet" / "mesh.json").exists()


def _command_lines() -> str:
    """Every live process's command line, from /proc (slim images have no ``ps``)."""
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # it exited meanwhile
                lines.append(
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
    return "\n".join(lines)


def _wait_gone(pids: list[int], timeout_s: float = 15.0) -> None:
    """Until every pid is gone (bounded: the caller asserts which are left)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(gone(p) for p in pids):
        time.sleep(0.05)


def test_killed_sidecar_is_restarted_and_serves_again(mesh: Mesh) -> None:
    before = mesh.replica("inference-0")
    os.kill(before["sidecar_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    after = before
    while time.monotonic() < deadline:
        after = mesh.replica("inference-0")
        if after["sidecar_pid"] not in (None, before["sidecar_pid"]) and after["admin"]:
            break
        time.sleep(0.1)
    assert after["sidecar_pid"] not in (None, before["sidecar_pid"])
    host, port = after["admin"].split(":")
    with httpx.Client(timeout=10.0) as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if c.get(f"http://{host}:{port}/ready").status_code == 200:
                break
            time.sleep(0.1)
    with httpx.Client(proxy=f"http://{mesh.replica('frontend-0')['outbound']}", timeout=10) as c:
        assert all(c.get("http://inference/v2/health/live").status_code == 200 for _ in range(4))


def test_second_up_on_the_same_state_dir_is_refused(mesh: Mesh) -> None:
    proc = run_meshlet("up", "mesh.yaml", cwd=mesh.dir)
    assert proc.returncode == 2
    assert "a mesh is already running from here" in proc.stderr


def test_bad_mesh_yaml_reports_every_problem_and_starts_nothing(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        "services:\n  inference:\n    workloads:\n      - command: x {bogus}\n        replicas: 0\n"
    )
    proc = run_meshlet("up", "mesh.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "mesh.yaml:5: services.inference.workloads[0].replicas" in proc.stderr
    assert not (tmp_path / ".meshlet").exists()


def test_command_that_cannot_start_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        "services:\n  svc:\n    workloads:\n      - command: /nonexistent/server --port {port}\n"
    )
    proc = run_meshlet("up", "mesh.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "svc-0 app: cannot start '/nonexistent/server'" in proc.stderr
    assert not (tmp_path / ".meshlet" / "mesh.json").exists()


def test_status_once_shows_golden_metrics_of_live_traffic(mesh: Mesh) -> None:
    proxy = f"http://{mesh.replica('frontend-0')['outbound']}"
    status = subprocess.Popen(
        [sys.executable, "-m", "meshlet", "status", "--once", "--window", "3"],
        cwd=mesh.dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    codes: list[int] = []
    with httpx.Client(proxy=proxy, timeout=10.0) as client:
        # Traffic for as long as the command runs, so both of its scrapes fall inside
        # it however slowly a loaded machine starts the command (a fixed 2.5 s of
        # traffic could end before its window began: no requests, no rate).
        deadline = time.monotonic() + 60
        while status.poll() is None and time.monotonic() < deadline and len(codes) < 50_000:
            codes.append(client.get("http://inference/v2/health/live").status_code)
    out, err = status.communicate(timeout=30)
    assert status.returncode == 0, err
    assert set(codes) == {200}
    cells = _inference_row(out)
    # NAMESPACE WORKLOAD DIR MESHED SUCCESS DENIED RPS P50 P99 MTLS TOTAL
    assert cells[:6] == ["ml", "inference", "inbound", "2/2", "100.00%", "0.00%"]
    assert float(cells[6]) > 0
    assert cells[7].endswith("ms")
    assert cells[9] == "100.00%"
    assert 0 < int(cells[10]) <= len(codes)  # requests after the last scrape are not counted
    # Once the traffic has stopped, a new scrape counts every request.
    again = run_meshlet("status", "--once", "--window", "0.2", cwd=mesh.dir)
    assert again.returncode == 0, again.stderr
    assert int(_inference_row(again.stdout)[10]) >= len(codes)


def _inference_row(table: str) -> list[str]:
    """The cells of the ``inference`` row of a ``meshlet status`` table."""
    inference = next(line for line in table.splitlines() if " inference " in line)
    return [c.strip() for c in inference.split("│") if c.strip()]


def test_bad_policy_file_is_reported_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "authz.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n"
        "  name: x\n  namespace: ml\nspec:\n  action: ALLOW\n  rulez: []\n"
    )
    (tmp_path / "mesh.yaml").write_text(
        "policies: [authz.yaml]\nservices:\n  svc:\n    workloads:\n"
        "      - command: /nonexistent/server --port {port}\n"
    )
    proc = run_meshlet("up", "mesh.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "authz.yaml:8" in proc.stderr
    assert "rulez" in proc.stderr
    assert not (tmp_path / ".meshlet").exists()


def test_demo_runs_the_scenario_and_passes_its_checks() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "meshlet.mesh.demo", "--requests", "150"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "frontend -> inference: 150 requests" in out
    assert "intruder -> inference: 20 requests" in out
    assert "100.0% over mutual TLS" in out
    assert "plaintext to an inference sidecar: refused" in out
    assert "FAIL" not in out


def test_ctrl_c_while_starting_stops_everything(tmp_path: Path) -> None:
    # The app never passes readiness (404), so `up` is still starting when interrupted.
    (tmp_path / "mesh.yaml").write_text(
        "services:\n  web:\n    workloads:\n"
        "      - command: '{python} -m http.server {port} --bind 127.0.0.1'\n"
        "        readiness: /never-ready\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshlet", "up", "mesh.yaml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    app_log = tmp_path / ".meshlet" / "replicas" / "web-0" / "app.log"
    sidecar_log = app_log.with_name("sidecar.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (app_log.exists() and "GET" in app_log.read_text()):
        time.sleep(0.1)
    assert app_log.exists(), "the app never started"
    pids = [
        json.loads(line)["pid"]
        for line in sidecar_log.read_text().splitlines()
        if line.startswith('{"event": "ready"')
    ]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert pids
    _wait_gone(pids)
    assert [p for p in pids if not gone(p)] == []
    assert str(tmp_path) not in _command_lines()  # nothing started from this mesh is left


ECHO_SERVER = (
    "import socketserver, sys\n"
    "class H(socketserver.StreamRequestHandler):\n"
    "    def handle(self):\n"
    "        for line in self.rfile:\n"
    "            self.wfile.write(b'echo:' + line)\n"
    "socketserver.ThreadingTCPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)
ECHO_CLIENT = (
    "import os, socket, time\n"
    "host, port = os.environ['MESHLET_TCP_ECHO'].split(':')\n"
    "with socket.create_connection((host, int(port)), timeout=10) as s:\n"
    "    s.sendall(b'hello mesh\\n')\n"
    "    print(s.makefile().readline().strip(), flush=True)\n"
    "time.sleep(600)\n"
)


def test_tcp_service_through_the_mesh(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text(ECHO_SERVER)
    (tmp_path / "client.py").write_text(ECHO_CLIENT)
    mesh = Mesh(
        tmp_path,
        (
            "services:\n  echo:\n    protocol: tcp\n    workloads:\n"
            "      - command: ['{python}', '{mesh_dir}/server.py', '{port}']\n"
            "clients:\n  caller:\n    command: ['{python}', '{mesh_dir}/client.py']\n"
        ),
    )
    try:
        log = tmp_path / ".meshlet" / "replicas" / "caller-0" / "app.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (log.exists() and log.read_text().strip()):
            time.sleep(0.05)
        assert log.read_text().strip() == "echo:hello mesh"
        # opaque TCP still crossed mTLS: the echo sidecar counted a mutual-TLS connection
        admin = mesh.replica("echo-0")["admin"]
        with httpx.Client(timeout=5.0) as c:
            text = c.get(f"http://{admin}/stats/prometheus").text
        assert re.search(
            r'istio_tcp_connections_opened_total\{[^}]*reporter="destination"'
            r'[^}]*connection_security_policy="mutual_tls"[^}]*\} [1-9]',
            text,
        ), text
    finally:
        assert mesh.stop() == 0
