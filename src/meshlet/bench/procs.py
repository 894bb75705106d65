"""Child processes of a benchmark: start, wait for readiness, measure, stop.

Readiness is always observed, never assumed: a ``READY <port>`` line from our
own upstreams, a finished mTLS handshake on a sidecar's inbound port, a 200
through the whole chain. Memory and CPU come from ``/proc/<pid>`` (Linux), summed
over a process and its descendants so a multi-worker sidecar is counted whole.
Summed RSS counts a page once per process that maps it, so it overstates forked
workers sharing their parent's heap copy-on-write; summed PSS does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from meshlet.errors import MeshError

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_POLL_S = 0.01  # readiness polling interval: 10 ms bounds the startup figures' error


class BenchError(MeshError):
    """A benchmark step failed (a child did not start, a readiness wait timed out)."""


@dataclass(slots=True, kw_only=True)
class Child:
    name: str
    process: asyncio.subprocess.Process
    exec_at: float  # loop time just before exec
    log: Path
    drain: asyncio.Task[None] | None = None

    def drain_stdout(self) -> None:
        """After readiness, keep reading stdout so a chatty child never blocks on a full pipe."""
        stream = self.process.stdout
        if stream is None or self.drain is not None:
            return

        async def discard() -> None:
            while await stream.read(65536):
                pass

        self.drain = asyncio.get_running_loop().create_task(discard())

    @property
    def pid(self) -> int:
        return self.process.pid


async def spawn(
    name: str,
    argv: list[str],
    *,
    logdir: Path,
    pass_fds: tuple[int, ...] = (),
    stdout_pipe: bool = False,
    env: dict[str, str] | None = None,
) -> Child:
    log = logdir / f"{name}.log"
    with log.open("ab") as sink:
        exec_at = asyncio.get_running_loop().time()
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE if stdout_pipe else sink,
            stderr=sink,
            pass_fds=pass_fds,
            env=env,
        )
    return Child(name=name, process=process, exec_at=exec_at, log=log)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


# The reference inference server announces its port this way (meshlet.workloads.inference).
_LISTENING = "meshlet-inference: listening on http://"


async def read_ready_port(child: Child, *, timeout_s: float) -> int:
    """Wait for the line that names the bound port: ``READY <port>`` from our
    upstreams, ``meshlet-inference: listening on http://HOST:PORT`` from the
    reference inference server."""
    assert child.process.stdout is not None
    try:
        line = await asyncio.wait_for(child.process.stdout.readline(), timeout=timeout_s)
    except TimeoutError:
        raise BenchError(f"{child.name}: not ready after {timeout_s} s (see {child.log})") from None
    text = line.decode(errors="replace").strip()
    parts = text.split()
    if text.startswith(_LISTENING):
        port = text.rsplit(":", 1)[1]
    elif len(parts) == 2 and parts[0] == "READY":
        port = parts[1]
    else:
        raise BenchError(f"{child.name}: exited before it was ready (see {child.log})")
    child.drain_stdout()
    return int(port)


async def stop(child: Child, *, grace_s: float = 5.0) -> None:
    if child.process.returncode is not None:
        return
    if child.drain is not None:
        child.drain.cancel()
    with contextlib.suppress(ProcessLookupError):
        child.process.terminate()
    try:
        await asyncio.wait_for(child.process.wait(), timeout=grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.process.kill()
        await child.process.wait()


async def wait_tls_ready(
    port: int, ctx: ssl.SSLContext, *, timeout_s: float, what: str, child: Child | None = None
) -> float:
    """Poll until a TLS handshake on ``port`` completes; return the loop time it did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx), timeout=1.0
            )
        except (OSError, ssl.SSLError, TimeoutError):
            pass
        else:
            done = loop.time()
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
            return done
        _check_alive(child, what)
        if loop.time() > deadline:
            raise BenchError(f"{what}: no TLS handshake on port {port} after {timeout_s} s")
        await asyncio.sleep(_POLL_S)


async def http_get(port: int, path: str = "/", *, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET (connection: close) for probes; returns status and body."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port), timeout=timeout_s
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), timeout=timeout_s)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError(f"not an HTTP response: {raw[:60]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return int(status_line[1]), body


def _dechunk(body: bytes) -> bytes:
    """Undo chunked transfer coding (RFC 9112 §7.1) of a complete body; no trailers."""
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


async def wait_http_ok(
    port: int, *, timeout_s: float, what: str, path: str = "/", child: Child | None = None
) -> float:
    """Poll until a GET through ``port`` answers 200; return the loop time it did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last = "no answer"
    while True:
        try:
            status, _ = await http_get(port, path, timeout_s=1.0)
        except (OSError, TimeoutError) as exc:
            last = repr(exc)
        else:
            if status == 200:
                return loop.time()
            last = f"status {status}"
        _check_alive(child, what)
        if loop.time() > deadline:
            raise BenchError(f"{what}: no 200 on port {port} after {timeout_s} s ({last})")
        await asyncio.sleep(_POLL_S)


def _check_alive(child: Child | None, what: str) -> None:
    if child is not None and child.process.returncode is not None:
        tail = child.log.read_text(errors="replace")[-400:] if child.log.exists() else ""
        raise BenchError(f"{what}: exited with {child.process.returncode}: {tail.strip()}")


# -- /proc readings ---------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after its ')' is fixed.
    return raw[raw.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants (workers forked by a sidecar)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime (fields 14 and 15 of /proc/<pid>/stat) summed, in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def rss_mib(pids: list[int]) -> float:
    """Resident set size now (VmRSS), summed, in MiB."""
    return sum(_status_kib(pid, "VmRSS") for pid in pids) / 1024.0


def peak_rss_mib(pids: list[int]) -> float:
    """High-water resident set size (VmHWM) over each process's life, summed, in MiB."""
    return sum(_status_kib(pid, "VmHWM") for pid in pids) / 1024.0


def parse_pss_kib(smaps_rollup: str) -> int | None:
    """The ``Pss:`` line of a ``/proc/<pid>/smaps_rollup`` text, in KiB (the kernel's
    unit despite its "kB"); ``None`` when the text has none (an unknown format).

    Only the exact ``Pss`` field: ``Pss_Anon``/``Pss_File``/``Pss_Dirty`` (Linux
    5.x+) are parts of it, not alternatives.
    """
    for line in smaps_rollup.splitlines():
        name, sep, rest = line.partition(":")
        if sep and name == "Pss":
            value = rest.split()
            if value and value[0].isdigit():
                return int(value[0])
            return None
    return None


def _pss_kib(pid: int) -> int | None:
    """One process's PSS; 0 once it has exited (as VmRSS reads), ``None`` if unreadable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except ProcessLookupError:  # a zombie: its memory is already gone
        return 0
    except FileNotFoundError:
        # Exited and reaped, or a kernel older than 4.14 (no smaps_rollup at all).
        return 0 if not Path(f"/proc/{pid}").exists() else None
    except OSError:  # EACCES: reading it needs ptrace access to the process
        return None
    return parse_pss_kib(text)


def pss_mib(pids: list[int]) -> float | None:
    """Proportional set size now (``Pss`` of smaps_rollup), summed, in MiB.

    Each page is divided among the processes that map it, so forked workers'
    shared copy-on-write pages count once in the sum, unlike :func:`rss_mib`.
    ``None`` (reported as n/a) when any process's figure is unreadable: a partial
    sum would pass for a saving.
    """
    total = 0
    for pid in pids:
        kib = _pss_kib(pid)
        if kib is None:
            return None
        total += kib
    return total / 1024.0
