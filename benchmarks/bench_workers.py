"""Memory of ``meshlet proxy --workers N``: PSS and USS per process, N=1 vs N=2.

    .venv/bin/python benchmarks/bench_workers.py
    .venv/bin/python benchmarks/bench_workers.py --src /tmp/before/src --src src

It also times ``GoldenMetrics.request`` (the one metrics call on the request
path) in each tree, in fresh interpreters taking turns, best of 7 x 200,000
calls per round: the merged admin must leave that cost unchanged.

RSS counts a page once in every process that maps it, so it overstates a
forked sidecar: pages the workers share copy-on-write with their parent are
counted N+1 times. PSS (proportional set size) divides each shared page by the
number of processes sharing it, so the PSS of the processes sums to what the
sidecar really costs; USS (private clean + private dirty) is what killing that
one process would free. Both come from ``/proc/PID/smaps_rollup``.

Each ``--src`` is a ``src/`` directory of a meshlet checkout (e.g. a
``git worktree`` of an older commit), run with the same interpreter, the same
certificates and the same load, one after the other in this one run, so the
figures compare side by side. For each tree and each worker count the script
starts an inbound sidecar (STRICT mTLS) in front of a tiny local HTTP app,
measures once idle (after the ready lines) and once after a fixed load
(``--requests`` over ``--connections`` mTLS keep-alive connections, new
connections spread over the workers by SO_REUSEPORT), then stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from meshlet.identity.ca import CertificateAuthority  # noqa: E402 - after the path tweak
from meshlet.identity.spiffeid import SpiffeId  # noqa: E402

SERVER_ID = "spiffe://cluster.local/ns/ml/sa/inference"
CLIENT_ID = "spiffe://cluster.local/ns/apps/sa/client"
START_TIMEOUT_S = 60.0
BODY = b"x" * 1024
POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: ml}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/apps/sa/client"]}}]}]
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """One process's memory, in KiB, from smaps_rollup."""

    rss_kib: int
    pss_kib: int
    uss_kib: int


def usage(pid: int) -> Usage:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0])
    return Usage(
        rss_kib=fields["Rss"],
        pss_kib=fields["Pss"],
        uss_kib=fields["Private_Clean"] + fields["Private_Dirty"],
    )


def tree(root: int) -> list[int]:
    """``root`` and its live children (the forked workers)."""
    pids = [root]
    children = Path(f"/proc/{root}/task/{root}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    return pids


# -- the local app and the load ------------------------------------------------


async def _app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY)
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(head + BODY)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _one_connection(port: int, ctx: ssl.SSLContext, count: int) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 30)
    try:
        for _ in range(count):
            writer.write(b"GET /m HTTP/1.1\r\nhost: inference\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await asyncio.wait_for(reader.readexactly(length), 30)
    finally:
        writer.close()


async def load(port: int, ctx: ssl.SSLContext, requests: int, connections: int) -> None:
    """``requests`` in rounds over fresh connections, so every worker gets some."""
    per = max(1, requests // (connections * 4))
    for _ in range(4):
        await asyncio.gather(*(_one_connection(port, ctx, per) for _ in range(connections)))


# -- one sidecar ---------------------------------------------------------------


async def measure(
    src: Path, workers: int, config: Path, ctx: ssl.SSLContext, args: argparse.Namespace
) -> tuple[list[Usage], list[Usage], float]:
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "meshlet", "proxy", "--config", str(config)]
    argv += ["--workers", str(workers)]
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env
    )
    assert proc.stdout is not None
    try:
        ready: list[str] = []
        while len(ready) < workers:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
            if not line:
                raise RuntimeError(f"{src}: proxy exited before ready")
            if b'"ready"' in line:
                ready.append(line.decode())
        ready_s = time.perf_counter() - started
        port = int(ready[0].split('"inbound": "')[1].split('"')[0].rsplit(":", 1)[1])
        await asyncio.sleep(args.settle_s)  # let start-up garbage settle: not a sync point
        idle = [usage(pid) for pid in tree(proc.pid)]
        await load(port, ctx, args.requests, args.connections)
        loaded = [usage(pid) for pid in tree(proc.pid)]
        return idle, loaded, ready_s
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


_HOT_PATH = """
import sys, timeit
from meshlet.telemetry.metrics import GoldenMetrics
m = GoldenMetrics()
src, dst = "spiffe://cluster.local/ns/apps/sa/client", "spiffe://cluster.local/ns/ml/sa/inference"
def one():
    m.request(reporter="destination", source_principal=src, destination_principal=dst,
              destination_service="inference", request_protocol="http", response_code=200,
              mtls=True, duration_s=0.0012, request_bytes=512, response_bytes=1024)
print(min(timeit.repeat(one, number=200000, repeat=7)) / 200000 * 1e9)
"""


async def hot_path(srcs: list[Path], rounds: int) -> None:
    """ns per GoldenMetrics.request in each tree; rounds interleave the trees."""
    times: dict[Path, list[float]] = {src: [] for src in srcs}
    for _ in range(rounds):
        for src in srcs:
            env = dict(os.environ, PYTHONPATH=str(src))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _HOT_PATH, env=env, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await proc.communicate()
            times[src].append(float(out))
    print(f"# GoldenMetrics.request, ns per call, {rounds} interleaved rounds")
    print("| tree | best | median | worst |")
    print("|---|---|---|---|")
    for src, ns in times.items():
        ns.sort()
        print(f"| {src} | {ns[0]:.0f} | {ns[len(ns) // 2]:.0f} | {ns[-1]:.0f} |")


def _mib(kib: int) -> str:
    return f"{kib / 1024:6.1f}"


def report(label: str, workers: int, phase: str, usages: list[Usage]) -> str:
    total_pss = sum(u.pss_kib for u in usages)
    total_uss = sum(u.uss_kib for u in usages)
    total_rss = sum(u.rss_kib for u in usages)
    per = " ".join(f"{_mib(u.pss_kib)}/{_mib(u.uss_kib)}" for u in usages)
    return (
        f"| {label} | {workers} | {phase} | {_mib(total_pss)} | {_mib(total_uss)} "
        f"| {_mib(total_rss)} | {per} |"
    )


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    ca = CertificateAuthority.init(work / "ca", "cluster.local", now=time.time())
    for name, spiffe_id in (("server", SERVER_ID), ("client", CLIENT_ID)):
        svid = ca.issue(SpiffeId.parse(spiffe_id), now=time.time() - 60, ttl_s=3600)
        svid.write(work / name)
    ctx = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(work / "client/bundle.pem")
    )
    ctx.check_hostname = False
    ctx.load_cert_chain(str(work / "client/cert.pem"), str(work / "client/key.pem"))
    app = await asyncio.start_server(_app, "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    config = work / "proxy.yaml"
    policies = ""
    if args.policy:  # the policy gate, as `meshlet bench`'s server sidecar runs it
        (work / "policy.yaml").write_text(POLICY)
        policies = f", policies: [{work}/policy.yaml]"
    config.write_text(
        f"identity: {{cert: {work}/server/cert.pem, key: {work}/server/key.pem,"
        f" bundle: {work}/server/bundle.pem}}\n"
        "admin: 127.0.0.1:0\n"
        "workload: {name: inference, namespace: ml}\n"
        f"inbound: {{listen: 127.0.0.1:0, app: 127.0.0.1:{app_port}, mtls: STRICT{policies}}}\n"
    )
    print(f"# {sys.executable}; {args.requests} requests over {args.connections} connections;"
          f" policy gate {'on' if args.policy else 'off'}")  # fmt: skip
    print("# MiB; per process: PSS/USS, the parent first")
    print("| tree | workers | phase | PSS sum | USS sum | RSS sum | per process PSS/USS |")
    print("|---|---|---|---|---|---|---|")
    for _ in range(args.repeat):
        for src in args.src:
            label = str(src)
            for workers in args.workers:
                idle, loaded, ready_s = await measure(src, workers, config, ctx, args)
                print(report(label, workers, f"idle (ready {ready_s * 1000:.0f} ms)", idle))
                print(report(label, workers, "after load", loaded))
    app.close()
    if args.hot_path_rounds:
        await hot_path(args.src, args.hot_path_rounds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, action="append", help="a meshlet src/ directory")
    parser.add_argument("--workers", default="1,2", help="worker counts (1,2)")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--settle-s", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--policy", action="store_true", help="with an ALLOW policy (the gate)")
    parser.add_argument("--hot-path-rounds", type=int, default=8, help="0 to skip")
    args = parser.parse_args()
    args.src = [p.resolve() for p in (args.src or [ROOT / "src"])]
    args.workers = [int(w) for w in args.workers.split(",")]
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
