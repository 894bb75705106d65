"""Sidecar operations costs: telemetry on the hot path, start-up, idle memory, reload.

    .venv/bin/python benchmarks/bench_ops.py            # all sections
    .venv/bin/python benchmarks/bench_ops.py --quick    # fewer repetitions

Prints:
  * GoldenMetrics.request and AccessLog.record per call (µs, best of 5 runs),
    access-log line encoding (µs per line, paid at flush time), and the
    /stats/prometheus render time for 1,000 label sets;
  * `meshlet proxy` start-up: spawn to ready line (ms) and idle RSS (MiB);
  * certificate hot reload: file rewrite to new serial live (ms; the poll is 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshlet.clock import MonotonicClock  # noqa: E402 - after the path tweak
from meshlet.telemetry.accesslog import AccessLog  # noqa: E402
from meshlet.telemetry.metrics import GoldenMetrics  # noqa: E402


def _best_us(fn: object, number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6  # type: ignore[arg-type]


def hot_path(repeat: int) -> None:
    metrics = GoldenMetrics()
    src = "spiffe://cluster.local/ns/apps/sa/client"
    dst = "spiffe://cluster.local/ns/ml/sa/inference"

    def one_request() -> None:
        metrics.request(
            reporter="destination", source_principal=src, destination_principal=dst,
            destination_service="inference", request_protocol="http", response_code=200,
            mtls=True, duration_s=0.0012, request_bytes=512, response_bytes=1024,
        )  # fmt: skip

    log = AccessLog(lambda _b: None, clock=MonotonicClock(), max_entries=10**9)

    def one_record() -> None:
        log.record(
            start_wall=1_700_000_000.5, reporter="destination", method="POST",
            path="/v1/completions", protocol="HTTP/1.1", response_code=200,
            response_flags="-", request_bytes=512, response_bytes=1024, duration_s=0.0012,
            authority="inference", request_id="7f3a", user_agent="python-httpx/0.27",
            source_address="127.0.0.1:50000", upstream_host="127.0.0.1:8080",
            source_principal=src, destination_principal=dst, mtls=True,
        )  # fmt: skip

    noop = _best_us(lambda: None, 100_000, repeat)
    print(f"call overhead (lambda)            {noop:6.2f} µs")
    print(f"GoldenMetrics.request             {_best_us(one_request, 100_000, repeat):6.2f} µs")
    print(f"AccessLog.record (hot path)       {_best_us(one_record, 100_000, repeat):6.2f} µs")
    sample = log._buffer[0]
    encode_us = _best_us(lambda: log._encode(sample), 20_000, repeat)
    print(f"AccessLog line encode (at flush)  {encode_us:6.2f} µs")
    many = GoldenMetrics()
    for i in range(1000):
        many.request(
            reporter="destination", source_principal=f"{src}-{i}", destination_principal=dst,
            destination_service="inference", request_protocol="http", response_code=200,
            mtls=True, duration_s=0.001, request_bytes=1, response_bytes=1,
        )  # fmt: skip
    render_ms = min(timeit.repeat(many.render, number=1, repeat=repeat)) * 1e3
    print(
        f"render, 1000 label sets           {render_ms:6.1f} ms ({len(many.render()) // 1024} KiB)"
    )


async def _start(config: Path) -> tuple[asyncio.subprocess.Process, dict[str, object], float]:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshlet", "proxy", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=str(ROOT),
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
    return proc, json.loads(line), (time.perf_counter() - started) * 1e3


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _certs_serial(admin: str) -> str:
    host, port = admin.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /certs HTTP/1.1\r\nconnection: close\r\n\r\n")
    raw = await reader.read(-1)
    writer.close()
    return str(json.loads(raw.partition(b"\r\n\r\n")[2])["certificates"][0]["serial"])


async def process_figures(runs: int) -> None:
    import yaml

    from meshlet.identity.ca import CertificateAuthority
    from meshlet.identity.spiffeid import SpiffeId

    tmp = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    try:
        ca = CertificateAuthority.init(tmp / "ca", "cluster.local", now=time.time())
        spiffe_id = SpiffeId.parse("spiffe://cluster.local/ns/ml/sa/inference")
        ca.issue(spiffe_id, now=time.time() - 60).write(tmp / "id")
        config = {
            "identity": {k: str(tmp / "id" / f"{k}.pem") for k in ("cert", "key", "bundle")},
            "admin": "127.0.0.1:0",
            "inbound": {"listen": "127.0.0.1:0", "app": "127.0.0.1:9"},
            "outbound": {"listen": "127.0.0.1:0", "services": {}},
        }
        path = tmp / "proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        ready_ms, rss = [], []
        for _ in range(runs):
            proc, _, ms = await _start(path)
            await asyncio.sleep(0.5)
            ready_ms.append(ms)
            rss.append(_rss_mib(proc.pid))
            proc.terminate()
            await proc.wait()
        print(f"spawn to ready (median of {runs})     {statistics.median(ready_ms):6.0f} ms "
              f"(min {min(ready_ms):.0f})")  # fmt: skip
        print(f"idle RSS (median)                 {statistics.median(rss):6.1f} MiB")

        proc, ready, _ = await _start(path)
        admin = str(ready["admin"])
        before = await _certs_serial(admin)
        ca.issue(spiffe_id, now=time.time() - 60).write(tmp / "id")
        rotated = time.perf_counter()
        serial = before
        for _ in range(1000):  # bounded: the poll interval is 1 s
            serial = await _certs_serial(admin)
            if serial != before:
                break
            await asyncio.sleep(0.01)
        print(f"cert rewrite to new serial live   {(time.perf_counter() - rotated) * 1e3:6.0f} ms "
              f"({before[:8]}… -> {serial[:8]}…)")  # fmt: skip
        proc.terminate()
        await proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    print(f"meshlet ops benchmark, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    hot_path(repeat=3 if args.quick else 5)
    asyncio.run(process_figures(runs=3 if args.quick else 7))
    return 0


if __name__ == "__main__":
    sys.exit(main())
