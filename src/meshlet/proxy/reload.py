"""Certificate hot reload: notice changed identity files and swap the TLS contexts.

Polling a handful of ``stat`` calls once a second costs nothing measurable and
works everywhere inotify does not (bind-mounted Kubernetes secrets change by an
atomic symlink swap, which inotify on the file misses). A rotation is rarely
atomic across three files: a poll may see the new certificate with the old key.
Then ``reload_identity`` raises ``IdentityError``, the old identity stays in
use, and the reload is retried on every poll until it succeeds or the files
change again, so a half-written rotation heals itself within a second.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from meshlet.errors import IdentityError

logger = logging.getLogger(__name__)

# Once a second: rotations happen at half an SVID's lifetime (hours), so a
# second of delay is irrelevant, and ~3 stat calls per second are free.
DEFAULT_POLL_INTERVAL_S = 1.0

_Signature = tuple[tuple[int, int, int] | None, ...]


class FileWatcher:
    """Tells whether any of ``paths`` changed since the last look (mtime, size,
    inode: a rename-over or a symlink swap changes the inode even when the
    mtime resolution hides a fast rewrite)."""

    __slots__ = ("_last", "_paths")

    def __init__(self, paths: Sequence[Path]) -> None:
        self._paths = tuple(paths)
        self._last = self._signature()

    def _signature(self) -> _Signature:
        sig: list[tuple[int, int, int] | None] = []
        for path in self._paths:
            try:
                st = os.stat(path)
            except OSError:
                sig.append(None)  # a missing file mid-rotation is a change too
            else:
                sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sig)

    def changed(self) -> bool:
        current = self._signature()
        if current == self._last:
            return False
        self._last = current
        return True


class IdentityReloader:
    """Polls the identity files and calls ``reload`` after a change, retrying a
    failed reload on every later poll until it succeeds."""

    __slots__ = ("_pending", "_reload", "_watcher", "failures", "reloads")

    def __init__(self, paths: Sequence[Path], reload: Callable[[], None]) -> None:
        self._watcher = FileWatcher(paths)
        self._reload = reload
        self._pending = False
        self.reloads = 0
        self.failures = 0

    def poll(self) -> bool:
        """Look once; return True when a new identity went live."""
        if self._watcher.changed():
            self._pending = True
        if not self._pending:
            return False
        try:
            self._reload()
        except IdentityError as exc:
            self.failures += 1
            logger.warning("identity_reload_failed", extra={"error": str(exc)})
            return False
        self._pending = False
        self.reloads += 1
        logger.info("certificate_rotated")
        return True

    async def run(self, stop: asyncio.Event, interval_s: float = DEFAULT_POLL_INTERVAL_S) -> None:
        """Poll every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                self.poll()
