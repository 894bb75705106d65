"""Start-up objects are frozen out of the collector's reach."""

from __future__ import annotations

import gc

from meshlet.proxy.memory import freeze_startup_heap


def test_freeze_moves_live_objects_to_the_permanent_generation() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    keep = [object() for _ in range(1000)]
    try:
        frozen = freeze_startup_heap()
        assert frozen >= len(keep)
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
