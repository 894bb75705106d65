"""Audit log throughput: events/s written to disk with the hash chain intact.

Goal (issue 4): >= 100,000 events/s. The seeds quote 12k (Istio) and 8k (Linkerd)
audit events/s. One producer thread records realistic denial events as fast as
it can; the clock stops when ``close()`` returns, i.e. when every event is
serialized, hashed, written and fsynced. The chain is then verified.

Run: .venv/bin/python benchmarks/bench_audit.py [--events N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from meshlet.clock import MonotonicClock
from meshlet.telemetry.audit import AuditLog, rotated_files, verify


def event(i: int) -> dict[str, object]:
    return {
        "request_id": f"req-{i:08d}",
        "source_principal": "spiffe://cluster.local/ns/foo/sa/sleep",
        "source_ip": "10.0.3.7",
        "request_principal": None,
        "destination_workload": "models/llama",
        "method": "POST",
        "path": "/v1/chat/completions",
        "decision": "DENY",
        "policy": "models/deny-untrusted",
        "rule": 0,
        "audit_policy": None,
        "reason": "denied by DENY policy models/deny-untrusted rule 0",
        "response_code": 403,
    }


def run(directory: Path, events: int, max_bytes: int) -> tuple[float, float, int, float]:
    path = directory / "audit.log"
    log = AuditLog(path, clock=MonotonicClock(), max_bytes=max_bytes, backups=1000)
    batch = [event(i) for i in range(events)]  # built up front: time the log, not dicts
    t0 = time.perf_counter()
    c0 = time.process_time()
    record = log.record
    for e in batch:
        record(e)
    t_recorded = time.perf_counter()
    log.close()
    t_done = time.perf_counter()
    cpu_s = time.process_time() - c0
    files = rotated_files(path)
    result = verify(files)
    assert result.ok, result
    assert result.lines == events, result
    return events / (t_done - t0), (t_recorded - t0) / events * 1e6, len(files), events / cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=16 * 1024 * 1024,
        help="rotate at this size (default 16 MiB, so rotation is exercised)",
    )
    parser.add_argument("--dir", type=Path, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} (figures degrade when > CPUs)")
    print(
        f"audit log: {args.events} events per run, {args.repeat} runs, "
        f"rotation at {args.max_bytes} bytes"
    )
    rates = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            rate, record_us, files, per_cpu = run(Path(d), args.events, args.max_bytes)
        rates.append(rate)
        print(
            f"  run {i}: {rate:,.0f} events/s to disk, {per_cpu:,.0f} per CPU-second of this "
            f"process (record() {record_us:.2f} us/event on the request path), {files} file(s), "
            "chain verified"
        )
    median = sorted(rates)[len(rates) // 2]
    print(
        f"median: {median:,.0f} events/s; goal >= 100,000/s: "
        f"{'met' if median >= 100_000 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
