"""Helpers shared by the proxy-ops and Envoy interop integration tests.

A test CA issuing real SVIDs, a tiny local app (HTTP echo and TCP echo) on
127.0.0.1 port 0, bootstrap files, and a ``meshlet proxy`` subprocess whose
ready lines tell us the bound ports (no port guessing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshlet.config.bootstrap import IdentityFiles
from meshlet.identity.ca import CertificateAuthority
from meshlet.identity.spiffeid import SpiffeId

TRUST_DOMAIN = "cluster.local"
REPO = Path(__file__).resolve().parents[3]
PYTHON = str(REPO / ".venv" / "bin" / "python")
STEP_TIMEOUT_S = 15.0


def spiffe(ns: str, sa: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}"


def make_ca(directory: Path) -> CertificateAuthority:
    return CertificateAuthority.init(directory / "ca", TRUST_DOMAIN, now=time.time())


def issue(
    ca: CertificateAuthority, directory: Path, spiffe_id: str, *, ttl_s: float = 3600.0
) -> IdentityFiles:
    """Write cert.pem/key.pem/bundle.pem for ``spiffe_id`` into ``directory``."""
    svid = ca.issue(SpiffeId.parse(spiffe_id), now=time.time() - 60, ttl_s=ttl_s)
    svid.write(directory)
    return IdentityFiles(
        cert=directory / "cert.pem", key=directory / "key.pem", bundle=directory / "bundle.pem"
    )


def client_context(files: IdentityFiles) -> ssl.SSLContext:
    """An mTLS client context like a peer sidecar's (TLS 1.3, no hostname check)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.bundle))
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(files.cert), str(files.key))
    return ctx


async def wait_until(predicate: Callable[[], bool], timeout_s: float = STEP_TIMEOUT_S) -> None:
    """Poll ``predicate`` every 10 ms until true; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- local apps


@dataclass
class EchoApp:
    """HTTP/1.1 app: answers every request with JSON of its method, path and
    headers; ``/slow?ms=N`` waits N ms first. Counts requests served."""

    server: asyncio.Server | None = None
    served: int = 0
    port: int = 0
    headers_seen: list[dict[str, str]] = field(default_factory=list)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                self.headers_seen.append(headers)
                if target.startswith("/slow"):
                    ms = int(target.split("ms=")[1]) if "ms=" in target else 500
                    await asyncio.sleep(ms / 1000)
                payload = json.dumps(
                    {"method": method, "path": target, "headers": headers, "body_len": len(body)}
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
                )
                await writer.drain()
                self.served += 1
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def echo_app() -> AsyncIterator[EchoApp]:
    app = EchoApp()
    await app.start()
    try:
        yield app
    finally:
        await app.close()


@contextlib.asynccontextmanager
async def tcp_echo() -> AsyncIterator[int]:
    """A TCP echo server; yields its port. Echoes until the peer half-closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------- the proxy process


def write_bootstrap(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def identity_block(files: IdentityFiles) -> dict[str, str]:
    return {"cert": str(files.cert), "key": str(files.key), "bundle": str(files.bundle)}


@dataclass
class ProxyProcess:
    """A ``meshlet proxy`` subprocess; ``ready`` holds each worker's ready line."""

    process: asyncio.subprocess.Process
    ready: list[dict[str, Any]]
    stderr_lines: list[str] = field(default_factory=list)

    def address(self, name: str, worker: int = 0) -> tuple[str, int]:
        line = next(r for r in self.ready if r["worker"] == worker)
        host, port = str(line[name]).rsplit(":", 1)
        return host, int(port)

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = STEP_TIMEOUT_S) -> int:
        if self.process.returncode is None:
            self.process.send_signal(sig)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout=timeout_s)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise

    async def stderr_text(self) -> str:
        assert self.process.stderr is not None
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(self.process.stderr.read(), timeout=2)
            self.stderr_lines.append(data.decode(errors="replace"))
        return "".join(self.stderr_lines)


async def start_proxy(config_path: Path, *, workers: int = 1) -> ProxyProcess:
    """Start ``meshlet proxy`` and wait for every worker's ready line."""
    if (REPO / "src" / "meshlet" / "cli" / "proxy.py").exists():
        cmd = [PYTHON, "-m", "meshlet", "proxy", "--config", str(config_path)]
        if workers != 1:
            cmd += ["--workers", str(workers)]
    else:  # the CLI module is not in this checkout yet: call the runner directly
        code = (
            "import sys; from meshlet.proxy.runner import run_proxy; "
            f"sys.exit(run_proxy({str(config_path)!r}, workers={workers}))"
        )
        cmd = [PYTHON, "-c", code]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(REPO),
    )
    ready: list[dict[str, Any]] = []
    handle = ProxyProcess(process=proc, ready=ready)
    assert proc.stdout is not None
    try:
        while len(ready) < workers:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=STEP_TIMEOUT_S)
            if not line:
                raise RuntimeError(f"proxy exited before ready: {await handle.stderr_text()}")
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "ready":
                    ready.append(event)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return handle


@contextlib.asynccontextmanager
async def running_proxy(config_path: Path, *, workers: int = 1) -> AsyncIterator[ProxyProcess]:
    proxy = await start_proxy(config_path, workers=workers)
    try:
        yield proxy
    finally:
        if proxy.process.returncode is None:
            proxy.process.kill()
            await proxy.process.wait()


async def http_get(
    host: str, port: int, path: str = "/", *, ssl_ctx: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None, timeout_s: float = STEP_TIMEOUT_S,
) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One GET on a fresh connection; returns (status, headers, body)."""

    async def go() -> tuple[int, dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl_ctx)
        try:
            fields = {"host": host, **(headers or {}), "connection": "close"}
            extra = "".join(f"{k}: {v}\r\n" for k, v in fields.items())
            writer.write(f"GET {path} HTTP/1.1\r\n{extra}\r\n".encode())
            await writer.drain()
            raw = await reader.read(-1)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        return status, hdrs, body

    return await asyncio.wait_for(go(), timeout=timeout_s)


def python_executable() -> str:
    return PYTHON if Path(PYTHON).exists() else sys.executable
