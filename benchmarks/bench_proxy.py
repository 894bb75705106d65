"""What the meshlet sidecar pair adds, next to the floor of its design, in one run.

Topologies, all over 127.0.0.1 with the same certificates and the same upstream
(uvloop + httptools, 1 KiB responses):

  direct   loadgen -> upstream
  floor    loadgen -> bare relay -> mTLS -> bare relay -> upstream
           (uvloop + httptools relays with no features: one upstream connection
            per client connection, bytes passed through after parsing)
  meshlet  loadgen -> `meshlet proxy` outbound -> mTLS -> `meshlet proxy` inbound -> upstream
  baseline the same meshlet pair run from another git revision (``--baseline REV``,
           exported with ``git archive``), for before/after ratios in one run

Load: constant-rate open loop (latency measured from each request's scheduled
send time, so queueing is not hidden) over keep-alive connections, for a bounded
time; then, optionally, a closed-loop maximum rate. Each proxy's CPU comes from
/proc/<pid>/stat (utime + stime) across the measured window, RSS from
/proc/<pid>/status.

New-connection mTLS handshakes: a client holding the client SVID opens fresh
TLS 1.3 connections one after another (connect + handshake, then close) to the
floor's inbound relay (a bare uvloop TLS server with the same certificates) and
to each meshlet inbound listener; the bench reports p50/p99 and the server's
CPU per handshake.

    .venv/bin/python benchmarks/bench_proxy.py                  # 1000 req/s, 5 s each
    .venv/bin/python benchmarks/bench_proxy.py --rate 2000 --seconds 10 --max-rate
    .venv/bin/python benchmarks/bench_proxy.py --baseline HEAD~3   # before/after
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_ID = "spiffe://cluster.local/ns/bench/sa/server"
CLIENT_ID = "spiffe://cluster.local/ns/bench/sa/client"


# ----------------------------------------------------------------- child roles


def _announce(port_file: str, sock: socket.socket) -> None:
    """Tell the parent the bound port (a tiny write before serving starts)."""
    Path(port_file).write_text(str(sock.getsockname()[1]))


def _upstream(port_file: str) -> None:
    """1 KiB responses, keep-alive, as fast as uvloop + httptools go."""
    import httptools
    import uvloop

    body = b"x" * 1024
    response = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1024\r\n\r\n" + body

    class App(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.p = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.p.feed_data(data)

        def on_message_complete(self) -> None:
            self.t.write(response)

    async def main() -> None:
        sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        await asyncio.get_running_loop().create_server(App, sock=sock)
        _announce(port_file, sock)
        await asyncio.Event().wait()

    uvloop.run(main())


def _relay(port_file: str, target_port: int, side: str, certs: str) -> None:
    """The floor: parse with httptools, pass bytes on; mTLS on the sidecar hop."""
    import httptools
    import uvloop

    d = Path(certs)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx, who in ((server_ctx, "server"), (client_ctx, "client")):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(str(d / who / "cert.pem"), str(d / who / "key.pem"))
        ctx.load_verify_locations(str(d / who / "bundle.pem"))
    client_ctx.check_hostname = False

    class Up(asyncio.Protocol):
        def __init__(self, down: Down) -> None:
            self.down = down
            self.p = httptools.HttpResponseParser(self)

        def connection_made(self, transport: Any) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            self.p.feed_data(data)
            self.down.t.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.down.t.close()

    class Down(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.p = httptools.HttpRequestParser(self)
            self.up: Any = None
            self.buf: list[bytes] = []
            transport.pause_reading()
            asyncio.get_running_loop().create_task(self.connect())

        async def connect(self) -> None:
            loop = asyncio.get_running_loop()
            ctx = client_ctx if side == "out" else None
            _, self.up = await loop.create_connection(
                lambda: Up(self), "127.0.0.1", target_port, ssl=ctx,
                server_hostname="" if ctx else None)  # fmt: skip
            if self.buf:
                self.up.t.write(b"".join(self.buf))
            self.t.resume_reading()

        def data_received(self, data: bytes) -> None:
            self.p.feed_data(data)
            if self.up is None:
                self.buf.append(data)  # TLS may deliver before pause_reading bites
            else:
                self.up.t.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.up is not None:
                self.up.t.close()

    async def main() -> None:
        sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        ctx = server_ctx if side == "in" else None
        await asyncio.get_running_loop().create_server(Down, sock=sock, ssl=ctx)
        _announce(port_file, sock)
        await asyncio.Event().wait()

    uvloop.run(main())


def _loadgen(port: int, rate: float, seconds: float, conns: int, host: str, closed: bool) -> None:
    """Open loop at ``rate`` (or closed loop as fast as possible); prints JSON."""
    import httptools
    import uvloop

    request = f"GET /bench HTTP/1.1\r\nhost: {host}\r\n\r\n".encode()
    lat: list[float] = []
    errors = [0]

    class C(asyncio.Protocol):
        def __init__(self) -> None:
            self.done: asyncio.Future[None] | None = None
            self.p = httptools.HttpResponseParser(self)

        def connection_made(self, transport: Any) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            self.p.feed_data(data)

        def on_message_complete(self) -> None:
            if self.p.get_status_code() != 200:
                errors[0] += 1
            if self.done is not None and not self.done.done():
                self.done.set_result(None)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.done is not None and not self.done.done():
                self.done.set_exception(ConnectionError("closed"))

    async def worker(i: int, t0: float, end: float) -> None:
        # uvloop's loop.time() ticks in milliseconds: use perf_counter for latency.
        loop = asyncio.get_running_loop()
        now = time.perf_counter
        _, c = await loop.create_connection(C, "127.0.0.1", port)
        k = i
        while True:
            due = t0 + k / rate if not closed else now()
            if due >= end:
                break
            if due > now():
                await asyncio.sleep(due - now())
            c.done = loop.create_future()
            c.t.write(request)
            try:
                await asyncio.wait_for(c.done, 10)
            except (TimeoutError, ConnectionError) as exc:
                errors[0] += 1
                print(f"loadgen: connection {i}: {exc!r}", file=sys.stderr)
                return
            lat.append(now() - due)
            k += conns

    async def main() -> None:
        t0 = time.perf_counter() + 0.05
        await asyncio.gather(*(worker(i, t0, t0 + seconds) for i in range(conns)))
        lat.sort()
        n = len(lat)

        def q(p: float) -> float:
            return lat[min(n - 1, int(p * n))] * 1000 if n else float("nan")

        print(json.dumps({"requests": n, "errors": errors[0], "rate": n / seconds,
                          "p50_ms": q(0.50), "p99_ms": q(0.99), "p999_ms": q(0.999)}))  # fmt: skip

    uvloop.run(main())


def _handshakes(port: int, count: int, certs: str) -> None:
    """``count`` sequential new mTLS connections; prints JSON.

    Two times per connection: the client's handshake (connect + TLS 1.3
    handshake, which completes on the client before the server has checked the
    client certificate) and the first response (one GET answered over it, so the
    server's verification and its first request are in)."""
    d = Path(certs) / "client"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_cert_chain(str(d / "cert.pem"), str(d / "key.pem"))
    ctx.load_verify_locations(str(d / "bundle.pem"))
    request = b"GET /bench HTTP/1.1\r\nhost: bench\r\n\r\n"
    shake: list[float] = []
    first: list[float] = []
    errors = 0
    for _ in range(count):
        t = time.perf_counter()
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            with ctx.wrap_socket(raw, server_hostname=None) as tls:
                shake.append(time.perf_counter() - t)
                tls.sendall(request)
                got = b""
                while not got.endswith(b"x" * 16):  # the 1 KiB body ends in 'x's
                    part = tls.recv(65536)
                    if not part:
                        raise ConnectionError("closed before the response")
                    got += part
                first.append(time.perf_counter() - t)
        except OSError:
            errors += 1

    def q(xs: list[float], p: float) -> float:
        xs.sort()
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else float("nan")

    print(json.dumps({"handshakes": len(shake), "errors": errors,
                      "p50_ms": q(shake, 0.5), "p99_ms": q(shake, 0.99),
                      "first_p50_ms": q(first, 0.5), "first_p99_ms": q(first, 0.99)}))  # fmt: skip


def _hot_path(certs: str, count: int) -> None:
    """Python CPU per request of the drivers and routers, no sockets: a request
    fed to an outbound (then inbound) DownstreamConnection, forwarded to a
    pooled UpstreamConnection on a fake transport, its 1 KiB response fed back.
    Prints JSON: best of five ``time.process_time`` runs, µs per request."""
    from meshlet.clock import MonotonicClock
    from meshlet.config.bootstrap import load_bootstrap
    from meshlet.proxy.driver_down import DownstreamConnection
    from meshlet.proxy.driver_up import UpstreamConnection
    from meshlet.proxy.pool import EndpointPool
    from meshlet.proxy.server import ProxyServer
    from meshlet.telemetry.metrics import GoldenMetrics

    class Fake:
        """The transport surface the drivers use; writes are dropped."""

        def write(self, data: bytes) -> None:
            pass

        def get_extra_info(self, key: str, default: Any = None) -> Any:
            return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 15001)}.get(
                key, default
            )

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

        def close(self) -> None:
            pass

        def abort(self) -> None:
            pass

    conf = Path(certs) / "hot.yaml"
    conf.write_text(
        "identity: {cert: server/cert.pem, key: server/key.pem, bundle: server/bundle.pem}\n"
        "admin: null\n"
        "inbound: {listen: 127.0.0.1:0, app: 127.0.0.1:9, mtls: STRICT}\n"
        "outbound:\n  listen: 127.0.0.1:0\n  services:\n    bench:\n      endpoints:\n"
        f'        - {{address: 127.0.0.1:9, identity: "{SERVER_ID}"}}\n'
    )
    server = ProxyServer(load_bootstrap(str(conf)), metrics=GoldenMetrics(), clock=MonotonicClock())
    server.reload_identity()
    request = b"GET /bench HTTP/1.1\r\nhost: bench\r\nuser-agent: bench\r\naccept: */*\r\n\r\n"
    response = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1024\r\n\r\n" + b"x" * 1024
    )
    out: dict[str, float] = {}
    for side in ("outbound", "inbound"):
        if side == "outbound":
            listener = server._outbound_listener()
            pool: EndpointPool | None = server._clusters[0].endpoints[0]
        else:
            listener = server._inbound_listener()
            pool = server._app
        assert pool is not None
        down = DownstreamConnection(listener, mtls=side == "inbound")
        down.connection_made(Fake())  # type: ignore[arg-type]
        up = UpstreamConnection(pool, listener)
        up.connection_made(Fake())  # type: ignore[arg-type]
        pool.idle.append(up)
        best = float("inf")
        for _ in range(5):
            t = time.process_time()
            for _ in range(count):
                down.data_received(request)
                up.data_received(response)
            best = min(best, time.process_time() - t)
        if up.closed or down.closed:
            raise RuntimeError(f"{side}: the fake exchange did not complete")
        out[f"{side}_us"] = best / count * 1e6
    print(json.dumps(out))


# ----------------------------------------------------------------- orchestration


def _spawn(
    args: list[str],
    *,
    wait_file: Path | None = None,
    ready_line: bool = False,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], float, str]:
    start = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=None, env=env)
    line = ""
    deadline = start + 20
    if ready_line:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if '"ready"' not in line:
            raise RuntimeError(f"{args[:4]} did not start: {line!r}")
    while wait_file is not None and not wait_file.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{args[:4]} did not start")
        time.sleep(0.01)
    return proc, time.monotonic() - start, line


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _run_ms(pid: int) -> float:
    """CPU time of ``pid``'s main thread in ms at nanosecond resolution
    (/proc/<pid>/schedstat), for start-up where 10 ms ticks are too coarse."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e6


def _rss_mib(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _self_args(*args: object) -> list[str]:
    return [PY, str(Path(__file__).resolve()), *(str(a) for a in args)]


def _load(port: int, a: argparse.Namespace, host: str, closed: bool = False) -> dict[str, Any]:
    out = subprocess.run(
        _self_args("--role", "loadgen", port, a.rate, a.seconds, a.conns, host, int(closed)),
        capture_output=True, check=True, timeout=a.seconds + 60,
    )  # fmt: skip
    if out.stderr:
        sys.stderr.write(out.stderr.decode()[-2000:])
    return dict(json.loads(out.stdout))


def _measure(port: int, pids: list[int], a: argparse.Namespace, host: str) -> dict[str, Any]:
    _load(port, argparse.Namespace(**{**vars(a), "seconds": 1.0}), host)  # warm up
    before = [_cpu_s(p) for p in pids]
    res = _load(port, a, host)
    used = [_cpu_s(p) - b for p, b in zip(pids, before, strict=True)]
    per_k = [u * 1000 / max(res["requests"], 1) * 1000 for u in used]  # CPU-ms per 1k
    res["cpu_ms_per_1k"] = per_k
    res["rss_mib"] = [_rss_mib(p) for p in pids]
    res["peak_rss_mib"] = [_rss_mib(p, "VmHWM") for p in pids]
    if a.max_rate:
        before = [_cpu_s(p) for p in pids]
        closed = _load(port, a, host, closed=True)
        res["max_rate"] = closed["rate"]
        # share of one core each proxy used while saturated
        res["max_rate_cores"] = [
            (_cpu_s(p) - b) / a.seconds for p, b in zip(pids, before, strict=True)
        ]
    return res


def _certs(workdir: Path) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from meshlet.identity.ca import CertificateAuthority
    from meshlet.identity.spiffeid import SpiffeId

    ca = CertificateAuthority.init(workdir / "ca", "cluster.local", now=time.time())
    for who, sid in (("server", SERVER_ID), ("client", CLIENT_ID)):
        ca.issue(SpiffeId.parse(sid), now=time.time()).write(workdir / who)


def _free_port() -> int:
    # Only for the bench's own child configs: the proxies bind it right away.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _meshlet_pair(
    workdir: Path, up_port: int, *, tag: str = "", src: Path | None = None
) -> tuple[list[subprocess.Popen[bytes]], int, int, dict[str, float]]:
    """A meshlet sidecar pair; ``src`` runs it from another tree (``--baseline``)."""
    env = None
    if src is not None:
        env = {**os.environ, "PYTHONPATH": str(src)}
    in_port, out_port = _free_port(), _free_port()
    (workdir / f"in{tag}.yaml").write_text(
        "identity: {cert: server/cert.pem, key: server/key.pem, bundle: server/bundle.pem}\n"
        "admin: null\n"
        f"inbound: {{listen: 127.0.0.1:{in_port}, app: 127.0.0.1:{up_port}, mtls: STRICT}}\n"
    )
    (workdir / f"out{tag}.yaml").write_text(
        "identity: {cert: client/cert.pem, key: client/key.pem, bundle: client/bundle.pem}\n"
        "admin: null\n"
        f"outbound:\n  listen: 127.0.0.1:{out_port}\n  services:\n    bench:\n      endpoints:\n"
        f'        - {{address: 127.0.0.1:{in_port}, identity: "{SERVER_ID}"}}\n'
    )
    meshlet = [PY, "-m", "meshlet"]
    p_in, t_in, _ = _spawn(
        [*meshlet, "proxy", "--config", str(workdir / f"in{tag}.yaml")], ready_line=True, env=env
    )
    p_out, t_out, _ = _spawn(
        [*meshlet, "proxy", "--config", str(workdir / f"out{tag}.yaml")], ready_line=True, env=env
    )
    idle_rss = max(_rss_mib(p_in.pid), _rss_mib(p_out.pid))
    idle = {
        "startup_ms": max(t_in, t_out) * 1000,
        "idle_rss_mib": idle_rss,
        "startup_cpu_ms": max(_cpu_s(p_in.pid), _cpu_s(p_out.pid)) * 1000,
    }
    return [p_out, p_in], out_port, in_port, idle


def _floor_pair(workdir: Path, up_port: int) -> tuple[list[subprocess.Popen[bytes]], int, int]:
    f_in, f_out = workdir / "relay-in.port", workdir / "relay-out.port"
    p_in, _, _ = _spawn(_self_args("--role", "relay", f_in, up_port, "in", workdir), wait_file=f_in)
    time.sleep(0.05)
    in_port = int(f_in.read_text())
    p_out, _, _ = _spawn(_self_args("--role", "relay", f_out, in_port, "out", workdir),
                         wait_file=f_out)  # fmt: skip
    time.sleep(0.05)
    return [p_out, p_in], int(f_out.read_text()), in_port


def _startup_runs(
    a: argparse.Namespace, work: Path, up_port: int, *, src_dirs: dict[str, Path | None]
) -> dict[str, dict[str, float]]:
    """Spawn-to-ready of a sidecar with both listeners (port 0), ``a.startups``
    times per tree, interleaved: medians of wall ms, CPU ms and RSS at ready."""
    if a.startups <= 0:
        return {}
    conf = work / "startup.yaml"
    conf.write_text(
        "identity: {cert: server/cert.pem, key: server/key.pem, bundle: server/bundle.pem}\n"
        "admin: 127.0.0.1:0\n"
        f"inbound: {{listen: 127.0.0.1:0, app: 127.0.0.1:{up_port}, mtls: STRICT}}\n"
        "outbound:\n  listen: 127.0.0.1:0\n  services:\n    bench:\n      endpoints:\n"
        f'        - {{address: 127.0.0.1:{up_port}, identity: "{SERVER_ID}"}}\n'
    )
    # Two ways: with no bytecode cache (every module compiled from source, as in a
    # shell with PYTHONDONTWRITEBYTECODE=1 like this project's) and with cached
    # bytecode (what an installed wheel has; a private cache dir, warmed once).
    cache = work / "pycache"
    runs: dict[str, list[tuple[float, float, float]]] = {}
    for _ in range(a.startups):
        for name, src in src_dirs.items():
            base_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            if src is not None:
                base_env["PYTHONPATH"] = str(src)
            cold = {**base_env, "PYTHONDONTWRITEBYTECODE": "1"}
            cached = {**base_env, "PYTHONPYCACHEPREFIX": str(cache / name)}
            if not (cache / name).exists():
                _start_once(conf, cached)  # fills the cache
            for kind, env in (("cold", cold), ("cached", cached)):
                runs.setdefault(f"{name}/{kind}", []).append(_start_once(conf, env))
    out: dict[str, dict[str, float]] = {}
    for key, rs in runs.items():
        name, kind = key.split("/")
        suffix = "" if kind == "cached" else "_cold"
        figures = out.setdefault(name, {"startup_runs": len(rs)})
        figures["startup_ms" + suffix] = statistics.median(r[0] for r in rs)
        figures["startup_cpu_ms" + suffix] = statistics.median(r[1] for r in rs)
        figures["idle_rss_mib" + suffix] = statistics.median(r[2] for r in rs)
    return out


def _start_once(conf: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """(wall ms, CPU ms, RSS MiB) from spawn to the ready line."""
    proc, wall_s, _ = _spawn(
        [PY, "-m", "meshlet", "proxy", "--config", str(conf)], ready_line=True, env=env
    )
    figures = (wall_s * 1000, _run_ms(proc.pid), _rss_mib(proc.pid))
    proc.terminate()
    proc.wait(timeout=10)
    return figures


def _export_revision(rev: str, dest: Path) -> Path:
    """``src/`` of git revision ``rev`` under ``dest`` (read-only use of the repo)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, timeout=60)
    return dest / "src"


def _measure_handshakes(port: int, server_pid: int, a: argparse.Namespace, certs: Path
                        ) -> dict[str, Any]:  # fmt: skip
    before = _cpu_s(server_pid)
    out = subprocess.run(
        _self_args("--role", "handshake", port, a.handshakes, certs),
        capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    res = dict(json.loads(out.stdout))
    res["server_cpu_ms"] = (_cpu_s(server_pid) - before) * 1000 / max(res["handshakes"], 1)
    return res


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Figure by figure median of several runs (lists element-wise)."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        if isinstance(first, list):
            out[key] = [statistics.median(r[key][i] for r in runs) for i in range(len(first))]
        else:
            out[key] = statistics.median(r[key] for r in runs)
    out["requests"] = int(out["requests"])
    out["errors"] = int(sum(r["errors"] for r in runs))
    return out


def _fmt(
    name: str, r: dict[str, Any], base: dict[str, Any] | None, floor: dict[str, Any] | None
) -> str:
    added50 = r["p50_ms"] - base["p50_ms"] if base else 0.0
    added99 = r["p99_ms"] - base["p99_ms"] if base else 0.0
    cpu = r.get("cpu_ms_per_1k", [])
    line = (f"{name:8s} {r['requests']:7d} req {r['errors']:3d} err  p50 {r['p50_ms']:6.3f} ms "
            f"p99 {r['p99_ms']:6.3f} ms p99.9 {r['p999_ms']:6.3f} ms  added p50 {added50:6.3f} "
            f"p99 {added99:6.3f} ms")  # fmt: skip
    if cpu:
        line += "  cpu-ms/1k per proxy " + "/".join(f"{c:5.1f}" for c in cpu)
        line += "  rss " + "/".join(f"{m:4.1f}" for m in r["rss_mib"]) + " MiB"
    if "max_rate" in r:
        line += f"  max {r['max_rate']:7.0f} req/s"
        if r.get("max_rate_cores"):
            line += " using " + "/".join(f"{c:.2f}" for c in r["max_rate_cores"]) + " cores"
    if floor and base and name not in ("floor", "direct"):
        f50 = floor["p50_ms"] - base["p50_ms"]
        ratio_lat = added50 / f50 if f50 > 0 else float("nan")
        ratio_cpu = (sum(cpu) / max(sum(floor["cpu_ms_per_1k"]), 1e-9)) if cpu else float("nan")
        line += f"\n{'':8s} vs floor: added p50 x{ratio_lat:4.2f}  CPU x{ratio_cpu:4.2f}"
    return line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--max-rate", action="store_true", help="also run a closed-loop max rate")
    ap.add_argument("--only", choices=["direct", "floor", "meshlet"], action="append")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure every topology this many times, interleaved; report medians",
    )
    ap.add_argument(
        "--baseline",
        metavar="REV",
        action="append",
        help="also run a meshlet pair from this git revision, side by side (before/after);"
        " repeat for more (shown as baseline, base2, ...; ratios are against the first)",
    )
    ap.add_argument(
        "--handshakes",
        type=int,
        default=200,
        help="new mTLS connections per server and round for the handshake figures (0: skip)",
    )
    ap.add_argument(
        "--startups",
        type=int,
        default=7,
        metavar="N",
        help="spawn-to-ready measurements per meshlet tree, interleaved (medians)",
    )
    ap.add_argument(
        "--hot-path",
        type=int,
        default=20000,
        metavar="N",
        help="requests per run of the in-process driver hot path, no sockets (0: skip)",
    )
    a = ap.parse_args()
    only = set(a.only or ["direct", "floor", "meshlet"])
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, dict[str, Any]] = {}
    shakes: dict[str, dict[str, Any]] = {}
    hot: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _certs(work)
        up_file = work / "up.port"
        up, _, _ = _spawn(_self_args("--role", "upstream", up_file), wait_file=up_file)
        procs.append(up)
        time.sleep(0.05)
        up_port = int(up_file.read_text())
        try:
            targets: dict[str, tuple[int, list[int]]] = {}
            tls_servers: dict[str, tuple[int, int]] = {}  # name -> (port, pid)
            if "direct" in only:
                targets["direct"] = (up_port, [])
            if "floor" in only:
                fl, port, in_port = _floor_pair(work, up_port)
                procs += fl
                targets["floor"] = (port, [p.pid for p in fl])
                tls_servers["floor"] = (in_port, fl[1].pid)
            idle: dict[str, dict[str, float]] = {}
            pairs: list[tuple[str, str, Path | None]] = []
            for n, rev in enumerate(a.baseline or ()):
                name = "baseline" if n == 0 else f"base{n + 1}"
                src = _export_revision(rev, work / name)
                pairs.append((name, f"-{name}", src))
            if "meshlet" in only:
                pairs.append(("meshlet", "", None))
            for name, tag, src_dir in pairs:
                ms, port, in_port, idle[name] = _meshlet_pair(work, up_port, tag=tag, src=src_dir)
                procs += ms
                targets[name] = (port, [p.pid for p in ms])
                tls_servers[name] = (in_port, ms[1].pid)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            shake_runs: dict[str, list[dict[str, Any]]] = {name: [] for name in tls_servers}
            for _ in range(a.rounds):  # interleaved, so load from other work hits all alike
                for name, (port, pids) in targets.items():
                    runs[name].append(_measure(port, pids, a, "bench"))
                for name, (port, pid) in tls_servers.items():
                    if a.handshakes > 0:
                        shake_runs[name].append(_measure_handshakes(port, pid, a, work))
            hot = _hot_path_runs(a, work, src_dirs={n: d for n, _, d in pairs})
            for name, figures in _startup_runs(
                a, work, up_port, src_dirs={n: d for n, _, d in pairs}
            ).items():
                idle[name].update(figures)
            results = {name: _median(rs) for name, rs in runs.items()}
            shakes = {name: _median_shakes(rs) for name, rs in shake_runs.items() if rs}
            for name, figures in idle.items():
                results[name].update(figures)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=10)
    load = Path("/proc/loadavg").read_text().split()[0]
    print(
        f"# rate {a.rate:.0f} req/s, {a.seconds:.0f} s x {a.rounds} interleaved rounds "
        f"(medians), {a.conns} keep-alive connections, 1 KiB responses; proxies listed "
        f"outbound/inbound; load average at the end: {load}"
    )
    base, floor = results.get("direct"), results.get("floor")
    for name, r in results.items():
        print(_fmt(name, r, base, floor))
    for name in [n for n in results if n.startswith("base")] + ["meshlet"]:
        if name in results:
            m = results[name]
            line = (
                f"{name:8s} spawn-to-ready {m['startup_ms']:.0f} ms wall, "
                f"{m['startup_cpu_ms']:.0f} ms CPU, idle RSS {m['idle_rss_mib']:.1f} MiB"
            )
            if "startup_cpu_ms_cold" in m:
                line += (
                    f" with cached bytecode; {m['startup_ms_cold']:.0f} ms wall, "
                    f"{m['startup_cpu_ms_cold']:.0f} ms CPU compiling from source "
                    f"(medians of {m['startup_runs']}: inbound + outbound + admin)"
                )
            print(line + "; peak RSS under load "
                  + "/".join(f"{x:.1f}" for x in m["peak_rss_mib"]) + " MiB")  # fmt: skip
    if "baseline" in results and "meshlet" in results:
        print(_fmt_before_after(results["baseline"], results["meshlet"]))
    for name, figures in hot.items():
        o, i = figures["outbound_us"], figures["inbound_us"]
        print(f"{name:8s} Python per request in process (fake transports): "
              f"outbound {o:.2f} µs, inbound {i:.2f} µs")  # fmt: skip
    if "baseline" in hot and "meshlet" in hot:
        b, x = hot["baseline"], hot["meshlet"]
        print(f"after/before hot path: outbound x{x['outbound_us'] / b['outbound_us']:.2f}, "
              f"inbound x{x['inbound_us'] / b['inbound_us']:.2f}")  # fmt: skip
    for name, h in shakes.items():
        print(f"{name:8s} new mTLS connection: handshake p50 {h['p50_ms']:.3f} ms "
              f"p99 {h['p99_ms']:.3f} ms; first response p50 {h['first_p50_ms']:.3f} ms "
              f"p99 {h['first_p99_ms']:.3f} ms; server CPU {h['server_cpu_ms']:.2f} ms per "
              f"connection ({h['handshakes']} per round, {h['errors']} errors)")  # fmt: skip
    return 0


def _hot_path_runs(
    a: argparse.Namespace, work: Path, *, src_dirs: dict[str, Path | None]
) -> dict[str, dict[str, float]]:
    """The in-process hot path of each meshlet tree, interleaved; medians."""
    if a.hot_path <= 0:
        return {}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in src_dirs}
    for _ in range(a.rounds):
        for name, src in src_dirs.items():
            env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
            out = subprocess.run(
                _self_args("--role", "hotpath", work, a.hot_path),
                capture_output=True, check=True, timeout=300, env=env,
            )  # fmt: skip
            runs[name].append(json.loads(out.stdout))
    return {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        for name, rs in runs.items()
        if rs
    }


def _median_shakes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("p50_ms", "p99_ms", "first_p50_ms", "first_p99_ms", "server_cpu_ms")
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["handshakes"] = runs[0]["handshakes"]
    out["errors"] = sum(r["errors"] for r in runs)
    return out


def _fmt_before_after(before: dict[str, Any], after: dict[str, Any]) -> str:
    """After/before ratios of the same-run figures (below 1.00 is better)."""

    def ratio(key: str) -> float:
        b, x = before[key], after[key]
        if isinstance(b, list):
            b, x = sum(b), sum(x)
        return float(x / b) if b else float("nan")

    return (
        f"after/before (meshlet/baseline, same run): CPU per request x{ratio('cpu_ms_per_1k'):.2f}"
        f"  p50 x{ratio('p50_ms'):.2f}  p99 x{ratio('p99_ms'):.2f}"
        f"  idle RSS x{ratio('idle_rss_mib'):.3f}  start-up CPU x{ratio('startup_cpu_ms'):.2f}"
        + (
            f" (x{ratio('startup_cpu_ms_cold'):.2f} from source)"
            if "startup_cpu_ms_cold" in before
            else ""
        )
    )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        role, rest = sys.argv[2], sys.argv[3:]
        if role == "upstream":
            _upstream(rest[0])
        elif role == "relay":
            _relay(rest[0], int(rest[1]), rest[2], rest[3])
        elif role == "hotpath":
            _hot_path(rest[0], int(rest[1]))
        elif role == "handshake":
            _handshakes(int(rest[0]), int(rest[1]), rest[2])
        elif role == "loadgen":
            _loadgen(int(rest[0]), float(rest[1]), float(rest[2]), int(rest[3]), rest[4],
                     rest[5] == "1")  # fmt: skip
        sys.exit(0)
    sys.exit(main())
