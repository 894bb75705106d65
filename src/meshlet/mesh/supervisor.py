"""Run a process, keep it running per its restart policy, and stop it with no orphans.

Each process starts in its own session, so it leads a process group holding
everything it forks; stopping sends SIGTERM to the whole group, waits a grace
period, then SIGKILLs the group, so a workload's children cannot outlive it. On
Linux each child also gets PR_SET_PDEATHSIG=SIGKILL, so even a ``kill -9`` of
``meshlet up`` leaves no sidecar behind.

Output (stdout and stderr together) is appended to the process's log file, and
each line is offered to an optional callback: that is how the runner reads a
sidecar's ``{"event": "ready", ...}`` announcement.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from meshlet.config.mesh import Restart
from meshlet.errors import ConfigError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
TAIL_LINES = 20  # output shown when a process fails to start
OUTPUT_LINE_LIMIT = 64 * 1024  # longer lines are logged whole, but cut for callbacks


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSpec:
    name: str  # "inference-v1-0 sidecar": how messages name it
    argv: tuple[str, ...]
    env: Mapping[str, str]  # the complete environment
    cwd: Path
    log_path: Path
    restart: Restart


@dataclass(slots=True, kw_only=True)
class Backoff:
    """Exponential restart delay that forgets failures after a stable run.

    Kubernetes' CrashLoopBackOff doubles from 10 s to 5 min and resets after 10
    minutes of running; a local mesh wants faster feedback, so 0.5 s to 10 s,
    reset after 10 s.
    """

    base_s: float = 0.5
    cap_s: float = 10.0
    stable_s: float = 10.0
    failures: int = 0

    def next_delay(self, ran_for_s: float) -> float:
        if ran_for_s >= self.stable_s:
            self.failures = 0
        delay = min(self.cap_s, self.base_s * float(2**self.failures))
        self.failures += 1
        return delay


def should_restart(policy: Restart, returncode: int) -> bool:
    return policy == "always" or (policy == "on-failure" and returncode != 0)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Supervised:
    """One supervised process."""

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        on_line: Callable[[str], None] | None = None,
        on_event: Callable[[str], None] = print,
        backoff: Backoff | None = None,
    ) -> None:
        self.spec = spec
        self.on_line = on_line
        self.on_event = on_event
        self.backoff = backoff or Backoff()
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._reader: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._started_at = 0.0
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def spawn(self) -> None:
        """Start the process; a command that cannot be executed is a ConfigError."""
        spec = self.spec
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = spec.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(spec.env),
                cwd=spec.cwd,
                start_new_session=True,  # own process group: stop() reaches grandchildren
                preexec_fn=_die_with_parent,  # only calls prctl: safe after fork
            )
        except OSError as exc:
            self._close_log()
            raise ConfigError(
                f"{spec.name}: cannot start {spec.argv[0]!r}: {exc.strerror or exc}"
                f" (command: {' '.join(spec.argv)})"
            ) from exc
        self._started_at = asyncio.get_running_loop().time()
        self.tail.clear()
        self._reader = asyncio.create_task(self._read(self.proc))
        log.info("process_started", extra={"process": spec.name, "pid": self.proc.pid})

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        """Copy output to the log byte for byte; hand complete lines to the callback.
        Chunks, not readline: a line longer than any buffer must not stop the copy."""
        assert proc.stdout is not None
        assert self._log is not None
        pending = b""
        while chunk := await proc.stdout.read(65536):
            self._log.write(chunk)
            self._log.flush()
            *lines, pending = (pending + chunk).split(b"\n")
            pending = pending[-OUTPUT_LINE_LIMIT:]  # only the callback's view is capped
            for line in lines:
                self._line(line)
        if pending:
            self._line(pending)

    def _line(self, raw: bytes) -> None:
        text = raw[:OUTPUT_LINE_LIMIT].decode("utf-8", "replace")
        self.tail.append(text)
        if self.on_line is not None:
            self.on_line(text)

    async def wait_exit(self) -> int:
        """The exit status, once the process has exited and its output is drained."""
        assert self.proc is not None, "BUG: wait_exit before spawn"
        code = await self.proc.wait()
        # The leader is gone; whatever it left in its group (and holding our pipe)
        # goes with it, so no orphan survives and the reader sees end of file.
        self._signal_group(self.proc.pid, signal.SIGKILL)
        if self._reader is not None:
            await self._reader
        return code

    async def supervise(self) -> None:
        """Restart per policy until ``stop``; returns when it is stopped or gives up."""
        loop = asyncio.get_running_loop()
        while True:
            code = await self.wait_exit()
            if self._stopping.is_set():
                return
            ran = loop.time() - self._started_at
            if not should_restart(self.spec.restart, code):
                self.on_event(
                    f"{self.spec.name} exited with status {code} (restart: "
                    f"{self.spec.restart}); log: {self.spec.log_path}"
                )
                self._close_log()
                return
            while True:
                delay = self.backoff.next_delay(ran)
                self.on_event(
                    f"{self.spec.name} exited with status {code} after {ran:.1f}s; "
                    f"restarting in {delay:.1f}s; log: {self.spec.log_path}"
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    return
                try:
                    await self.spawn()
                    break
                except ConfigError as exc:
                    self.on_event(str(exc))
                    ran = 0.0
            self.restarts += 1

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``, reap the leader."""
        self._stopping.set()
        proc = self.proc
        if proc is not None:
            self._signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                self.on_event(f"{self.spec.name} did not stop in {grace_s:.0f}s; killing it")
            # Anything left in the group (children that ignored SIGTERM) dies now.
            self._signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            if self._reader is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._reader, 1.0)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
