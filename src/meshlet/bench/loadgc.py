"""Keep the load generator's own garbage collections out of its measured window.

The generator is a Python process too: a full (generation 2) collection walks
every tracked object of uvloop, httptools, ssl and asyncio, and one such pass
of 7-10 ms landed inside the measured load of an earlier ``meshlet bench`` run
(docs/proxy.md, "Tail latency"). It delays every request the generator should
have sent meanwhile, for every topology alike, so it pollutes the figures
without telling topologies apart.

The window is bounded in time and in requests, so the remedy is safe:

- after set-up, ``gc.collect()`` then ``gc.freeze()``: everything imported and
  built so far moves to the permanent generation, which no collection scans;
- for the run, generation 2's threshold is raised out of reach, while
  generations 0 and 1 keep collecting young cycles, so memory stays bounded
  (only objects that survive two young passes accumulate, for seconds);
- afterwards the thresholds come back and one full collection runs, outside the
  window.

Every collection is timed through ``gc.callbacks`` (Python docs, "gc.callbacks":
called with ``"start"`` and ``"stop"`` around each one), so the report shows
the generator's worst pause in the measured window, with the hygiene on or off.
"""

from __future__ import annotations

import gc
from time import perf_counter_ns
from typing import Any

from meshlet.bench.histogram import Histogram

# Out of reach for a bounded run: generation 2 runs when this many generation-1
# passes have happened (CPython gcmodule.c, collect_generations), and a run
# makes a few hundred at most.
_GEN2_OFF = 1 << 30


class GcWindow:
    """Collections timed per generation; the quiet-window policy when ``hygiene``."""

    __slots__ = (
        "_measuring",
        "_saved",
        "_started_ns",
        "collections",
        "hygiene",
        "pauses",
        "setup_collect_ms",
    )

    def __init__(self, *, hygiene: bool) -> None:
        self.hygiene = hygiene
        self.pauses = Histogram()  # nanoseconds, measured window only
        self.collections = [0, 0, 0]  # per generation, measured window only
        self._measuring = False
        self._started_ns = 0
        self._saved: tuple[int, int, int] | None = None
        # how long the full pass took that hygiene runs before the first request
        self.setup_collect_ms = 0.0

    def setup(self) -> None:
        """Call once set-up is done, before the first request of the run."""
        gc.callbacks.append(self._on_gc)
        if not self.hygiene:
            return
        started = perf_counter_ns()
        gc.collect()
        self.setup_collect_ms = (perf_counter_ns() - started) / 1e6
        gc.freeze()
        t0, t1, t2 = gc.get_threshold()
        self._saved = (t0, t1, t2)
        gc.set_threshold(t0, t1, _GEN2_OFF)

    def measure(self, on: bool) -> None:
        """Count pauses from now on (``True``) or no longer (``False``)."""
        self._measuring = on

    def finish(self) -> None:
        """After the run: thresholds back, one full collection, callbacks removed."""
        self._measuring = False
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None
            gc.unfreeze()
            gc.collect()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started_ns = perf_counter_ns()
        elif self._measuring and self._started_ns:
            self.pauses.record(perf_counter_ns() - self._started_ns)
            self.collections[int(info.get("generation", 0))] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "hygiene": self.hygiene,
            "collections": list(self.collections),
            "max_pause_ms": self.pauses.max / 1e6,
            "setup_collect_ms": self.setup_collect_ms,
            "pause": self.pauses.to_dict(),
        }
