"""A tamper-evident audit log: hash-chained JSON lines, written off the request path.

Each line is one JSON object carrying ``seq`` (counting from 0 over the whole
chain), ``prev`` (the previous line's ``hash``, 64 zeros for the first line
ever) and, last, ``hash``: SHA-256 of the line's bytes before ``,"hash":...``
plus the closing ``}`` (i.e. the compact JSON of the line without ``hash``).
Editing a line breaks its own hash; deleting or reordering lines breaks the
next line's ``prev`` and ``seq``. ``verify`` names the first broken line.

Without a secret the chain cannot prove that lines were not cut from the *end*
of the newest file; ship the log off the machine (or anchor the latest hash
elsewhere) where that matters.

Requests only append a dict to a list. A writer thread serializes, hashes and
writes whole batches, flushing on size or interval; ``close`` (and interpreter
exit) drain everything, so a clean SIGTERM shutdown loses nothing. Size-based
rotation renames ``audit.log`` to ``audit.log.1`` (and so on) and the chain
simply continues in the new file.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from meshlet.clock import Clock

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_MAX_WRITERS = 64
# 64 MiB per file and 5 old files: a day of heavy denial traffic, bounded disk.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BACKUPS = 5
# Flush at least every 200 ms so `tail -f` and a crash lose little; batches of
# up to 4096 records keep syscalls rare under load.
DEFAULT_FLUSH_INTERVAL_S = 0.2
DEFAULT_BATCH = 4096

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, default=str).encode


# The hash covers the line's exact bytes up to this suffix (plus the closing
# brace), so checking it needs no JSON re-serialization: any tool can do it.
_HASH_TAIL = re.compile(rb',"hash":"([0-9a-f]{64})"\}\n\Z')


_RESERVED = frozenset({"seq", "prev", "hash"})


def seal(
    record: Mapping[str, Any], *, seq: int, prev: str, wall: float | None = None
) -> tuple[bytes, str]:
    """The chained line for ``record`` (with its newline) and the line's hash.

    The body is the compact JSON of ``{"time": wall, **record, "seq", "prev"}``,
    built with one ``json`` call and string formatting (no dict copies: this runs once
    per audit event); ``float.__repr__`` is what ``json`` writes for floats, so
    the body is exactly what ``json.dumps`` would produce.
    """
    if "seq" in record or "prev" in record or "hash" in record:
        record = {k: v for k, v in record.items() if k not in _RESERVED}
    inner = _dumps(record)
    fields = inner[1:-1] + "," if len(inner) > 2 else ""
    if wall is not None and "time" not in record:
        body = f'{{"time":{float(wall)!r},{fields}"seq":{seq},"prev":"{prev}"}}'
    else:
        body = f'{{{fields}"seq":{seq},"prev":"{prev}"}}'
    data = body.encode()
    digest = hashlib.sha256(data).hexdigest()
    return data[:-1] + b',"hash":"' + digest.encode() + b'"}\n', digest


def rotated_files(path: str | Path) -> list[Path]:
    """``path`` and its rotated siblings, oldest first: the order to verify in."""
    p = Path(path)
    numbered = []
    for sibling in p.parent.glob(p.name + ".*"):
        suffix = sibling.name[len(p.name) + 1 :]
        if suffix.isdigit():
            numbered.append((int(suffix), sibling))
    return [s for _, s in sorted(numbered, reverse=True)] + ([p] if p.exists() else [])


def _claim(path: Path) -> tuple[Path, IO[str]]:
    """An exclusive ``flock`` on ``<file>.lock`` so two writers never interleave
    one chain. A second writer (another ``--workers`` process, or a second
    sidecar pointed at the same path) takes ``<file>.w1``, ``.w2``...: its own
    chain, verified on its own, never mistaken for a rotated file."""
    for n in range(_MAX_WRITERS):
        candidate = path if n == 0 else path.with_name(f"{path.name}.w{n}")
        lock = open(f"{candidate}.lock", "a")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        if n:
            log.warning("audit_log_shared", extra={"path": str(path), "using": str(candidate)})
        return candidate, lock
    raise OSError(f"{path}: {_MAX_WRITERS} writers already hold this audit log")


def _last_line(path: Path) -> bytes | None:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            tail = f.read()
    except FileNotFoundError:
        return None
    lines = [line for line in tail.split(b"\n") if line.strip()]
    return lines[-1] if lines else None


class AuditLog:
    """The writer. ``record`` is safe from any thread and never blocks on disk."""

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Clock,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self.requested_path = Path(path)
        self.requested_path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self._lock = _claim(self.requested_path)
        self._clock = clock
        self._max_bytes = max_bytes
        self._backups = backups
        self._interval = flush_interval_s
        self._batch = batch
        # deque.append is atomic under the GIL: record() takes no lock. Items are
        # (wall time, event) pairs, or a threading.Event that flush() waits on.
        self._queue: deque[tuple[float, Mapping[str, Any]] | threading.Event] = deque()
        self._wake = threading.Event()
        self._closed = False
        self._seq, self._prev = self._resume()
        self._file = self.path.open("ab")
        self._size = self._file.tell()
        self._thread = threading.Thread(target=self._run, name="meshlet-audit", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _resume(self) -> tuple[int, str]:
        """Continue the chain of an existing log (restart, or after rotation)."""
        for candidate in reversed(rotated_files(self.path)):
            last = _last_line(candidate)
            if last is None:
                continue
            try:
                obj = json.loads(last)
                return int(obj["seq"]) + 1, str(obj["hash"])
            except (ValueError, KeyError, TypeError):
                log.warning("audit_log_tail_unreadable", extra={"path": str(candidate)})
                return 0, GENESIS
        return 0, GENESIS

    def record(self, event: Mapping[str, Any]) -> None:
        """Queue one event; ``time`` (wall clock, seconds) is added if absent."""
        if self._closed:
            raise ValueError("audit log is closed")
        queue = self._queue
        queue.append((self._clock.wall(), event))
        if len(queue) >= self._batch:
            self._wake.set()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Block until everything queued so far is written; False on timeout."""
        done = threading.Event()
        self._queue.append(done)
        self._wake.set()
        return done.wait(timeout_s)

    def close(self) -> None:
        """Drain, fsync and stop; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._thread.join()
        self._lock.close()  # releases the flock
        atexit.unregister(self.close)

    def _run(self) -> None:
        queue = self._queue
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            closing = self._closed  # read before draining: nothing is queued after it
            batch: list[tuple[float, Mapping[str, Any]]] = []
            waiters: list[threading.Event] = []
            for _ in range(len(queue)):
                item = queue.popleft()
                if isinstance(item, threading.Event):
                    if batch:
                        self._write(batch)
                        batch = []
                    waiters.append(item)
                else:
                    batch.append(item)
            if batch:
                self._write(batch)
            for waiter in waiters:
                waiter.set()
            if closing and not queue:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                return

    def _write(self, batch: Sequence[tuple[float, Mapping[str, Any]]]) -> None:
        chunks: list[bytes] = []
        size = self._size
        for wall, event in batch:
            data, self._prev = seal(event, seq=self._seq, prev=self._prev, wall=wall)
            self._seq += 1
            if size + len(data) > self._max_bytes and size > 0:
                self._file.write(b"".join(chunks))
                chunks = []
                self._rotate()
                size = 0
            chunks.append(data)
            size += len(data)
        self._file.write(b"".join(chunks))
        self._file.flush()
        self._size = size

    def _rotate(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        for n in range(self._backups, 0, -1):
            older = Path(f"{self.path}.{n}")
            if n == self._backups:
                older.unlink(missing_ok=True)
            elif older.exists():
                older.rename(f"{self.path}.{n + 1}")
        if self._backups > 0:
            self.path.rename(f"{self.path}.1")
        else:
            self.path.unlink(missing_ok=True)
        self._file = self.path.open("ab")
        log.info("audit_log_rotated", extra={"path": str(self.path)})


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyResult:
    ok: bool
    lines: int  # lines checked
    from_genesis: bool  # the first line checked is the first line ever written
    file: str | None = None  # where the first problem is
    line: int | None = None  # 1-based line number in ``file``
    reason: str = ""


def verify(paths: str | Path | Iterable[str | Path]) -> VerifyResult:
    """Check the chain across ``paths`` (oldest first); stop at the first break."""
    files = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    prev: str | None = None
    seq: int | None = None
    genesis: bool | None = None
    count = 0
    for file in files:
        try:
            handle = file.open("rb")
        except OSError as exc:
            return VerifyResult(
                ok=False,
                lines=count,
                from_genesis=bool(genesis),
                file=str(file),
                line=None,
                reason=f"cannot read: {exc}",
            )
        with handle:
            for number, raw in enumerate(handle, start=1):
                problem, obj = _check_line(raw, prev, seq)
                if problem:
                    return VerifyResult(
                        ok=False,
                        lines=count,
                        from_genesis=bool(genesis),
                        file=str(file),
                        line=number,
                        reason=problem,
                    )
                if genesis is None:
                    genesis = obj["prev"] == GENESIS and obj["seq"] == 0
                prev, seq = obj["hash"], obj["seq"]
                count += 1
    return VerifyResult(ok=True, lines=count, from_genesis=bool(genesis))


def _check_line(raw: bytes, prev: str | None, seq: int | None) -> tuple[str, dict[str, Any]]:
    if not raw.endswith(b"\n"):
        return "truncated line (no newline)", {}
    try:
        obj = json.loads(raw)
    except ValueError:
        return "not valid JSON", {}
    if not isinstance(obj, dict) or not {"hash", "prev", "seq"} <= obj.keys():
        return "missing seq/prev/hash", {}
    tail = _HASH_TAIL.search(raw)
    if tail is None or tail.group(1).decode() != obj["hash"]:
        return "the line does not end with its hash", obj
    if hashlib.sha256(raw[: tail.start()] + b"}").hexdigest() != obj["hash"]:
        return "hash mismatch: the line was edited", obj
    if prev is not None and obj["prev"] != prev:
        return "prev does not match the previous line's hash: lines removed or reordered", obj
    if seq is not None and obj["seq"] != seq + 1:
        return f"seq {obj['seq']} follows {seq}: lines removed or reordered", obj
    return "", obj
