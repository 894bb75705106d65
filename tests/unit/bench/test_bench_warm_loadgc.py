"""The load generator's GC window: full collections held back, pauses timed."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from meshlet.bench.loadgc import GcWindow


@pytest.fixture
def gc_state() -> Iterator[None]:
    """Whatever a test does, the process's collector is left as it was found."""
    thresholds = gc.get_threshold()
    callbacks = list(gc.callbacks)
    yield
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks
    gc.unfreeze()


@pytest.mark.usefixtures("gc_state")
def test_hygiene_freezes_the_heap_and_holds_full_collections_back() -> None:
    before = gc.get_threshold()
    window = GcWindow(hygiene=True)
    window.setup()
    t0, t1, t2 = gc.get_threshold()
    assert (t0, t1) == before[:2]  # young collections go on: memory stays bounded
    assert t2 > 1_000_000  # no full collection during a bounded run
    assert gc.get_freeze_count() > 0
    assert window.setup_collect_ms > 0  # the full pass ran before the window
    window.finish()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert window._on_gc not in gc.callbacks


@pytest.mark.usefixtures("gc_state")
def test_without_hygiene_the_collector_is_left_alone() -> None:
    before = gc.get_threshold()
    window = GcWindow(hygiene=False)
    window.setup()
    assert gc.get_threshold() == before
    window.finish()
    assert gc.get_threshold() == before
    assert window.to_dict()["hygiene"] is False


@pytest.mark.usefixtures("gc_state")
def test_only_collections_inside_the_measured_window_are_counted() -> None:
    window = GcWindow(hygiene=True)
    window.setup()
    gc.collect()  # before the window: not counted
    assert window.collections == [0, 0, 0]
    window.measure(True)
    gc.collect()  # an explicit full collection always runs its callbacks
    window.measure(False)
    gc.collect()  # after the window: not counted
    window.finish()
    figures = window.to_dict()
    # Automatic young collections may add to the counts; the explicit one is there.
    assert figures["collections"][2] >= 1
    assert figures["max_pause_ms"] > 0
    assert figures["pause"]["total"] == sum(figures["collections"])
