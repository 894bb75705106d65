"""``meshlet`` as a real subprocess.

Readiness is the JSON ready line a ``meshlet proxy`` or ``meshlet control``
prints on stdout once its sockets are bound (it names the bound ports, so no
test guesses a free port). Every wait is bounded and every helper leaves no
process behind when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshlet.config.bootstrap import IdentityFiles
from tests.support.waiting import STEP_TIMEOUT_S

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")
MESHLET = Path(sys.executable).parent / "meshlet"  # the console script


def run_meshlet(
    *args: str | Path, cwd: Path | None = None, timeout_s: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run the ``meshlet`` console script to completion, capturing its output."""
    return subprocess.run(
        [str(MESHLET), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd=cwd,
    )


def gone(pid: int) -> bool:
    """Dead or a zombie waiting for a reaper (a container's PID 1 may never reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def stop_process(proc: asyncio.subprocess.Process, timeout_s: float = STEP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# ------------------------------------------- one ready line, stderr to a log


@dataclass
class Proc:
    """A ``meshlet`` process whose stderr goes to ``log``; ``ready`` is its ready line."""

    process: asyncio.subprocess.Process
    ready: dict[str, Any]
    log: Path
    argv: list[str] = field(default_factory=list)

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 10.0)
            except TimeoutError:
                self.kill()
        return await self.process.wait()


def tail(log: Path) -> str:
    """The end of a process log, for an assertion message."""
    return log.read_text()[-2000:]


async def spawn(args: list[str], log: Path, *, timeout_s: float = 60.0) -> Proc:
    """Run ``meshlet ARGS`` and wait for its JSON ready line on stdout."""
    argv = [sys.executable, "-m", "meshlet", "--log-level", "INFO", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    with log.open("ab") as err:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=err, env=env, cwd=str(log.parent)
        )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"no ready line from {args[0]}: {tail(log)}") from None
    if not line:
        await process.wait()
        raise AssertionError(f"{args[0]} exited {process.returncode}: {tail(log)}")
    return Proc(process=process, ready=json.loads(line), log=log, argv=args)


# ------------------------------------------- meshlet proxy, one ready line per worker


def write_bootstrap(path: Path, config: dict[str, Any]) -> Path:
    """``config`` as a YAML bootstrap file at ``path``."""
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def identity_block(files: IdentityFiles) -> dict[str, str]:
    """The ``identity:`` section of a bootstrap naming ``files``."""
    return {"cert": str(files.cert), "key": str(files.key), "bundle": str(files.bundle)}


def inbound_bootstrap(
    files: IdentityFiles, app_port: int, *, admin: str | None = "127.0.0.1:0", **inbound: Any
) -> dict[str, Any]:
    """A bootstrap with one inbound listener on 127.0.0.1 port 0 in front of the
    app on ``app_port``; ``inbound`` adds keys to that section (``mtls``, ``protocol``)."""
    return {
        "identity": identity_block(files),
        "admin": admin,
        "inbound": {"listen": "127.0.0.1:0", "app": f"127.0.0.1:{app_port}", **inbound},
    }


def outbound_bootstrap(
    files: IdentityFiles, services: dict[str, Any], *, admin: str | None = "127.0.0.1:0"
) -> dict[str, Any]:
    """A bootstrap with one outbound listener on 127.0.0.1 port 0 for ``services``
    (the ``outbound.services`` mapping of the bootstrap file)."""
    return {
        "identity": identity_block(files),
        "admin": admin,
        "outbound": {"listen": "127.0.0.1:0", "services": services},
    }


@dataclass
class ProxyProcess:
    """A ``meshlet proxy`` subprocess; ``ready`` holds each worker's ready line.

    It leads its own process group, so ``kill`` also reaches the workers it
    forked: a worker that outlived a killed parent would hold the stdout and
    stderr pipes open, and closing the test's event loop would then hang."""

    process: asyncio.subprocess.Process
    ready: list[dict[str, Any]]
    stderr_lines: list[str] = field(default_factory=list)

    def kill(self) -> None:
        """SIGKILL the proxy and every worker it forked."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

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
            self.kill()
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
    cmd = [PYTHON, "-m", "meshlet", "proxy", "--config", str(config_path)]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(REPO),
        start_new_session=True,  # its own process group, workers included (see ProxyProcess)
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
        handle.kill()
        await proc.wait()
        raise
    return handle


@contextlib.asynccontextmanager
async def running_proxy(config_path: Path, *, workers: int = 1) -> AsyncIterator[ProxyProcess]:
    proxy = await start_proxy(config_path, workers=workers)
    try:
        yield proxy
    finally:
        proxy.kill()  # workers too, even when the parent has already exited
        await proxy.process.wait()


def python_executable() -> str:
    """The project's interpreter (the venv's when there is one)."""
    return PYTHON if Path(PYTHON).exists() else sys.executable
