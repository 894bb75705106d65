"""Start-up objects are frozen out of the collector's reach."""

from __future__ import annotations

import gc

from meshlet.proxy.memory import freeze_startup_heap


def test_freeze_moves_live_objects_to_the_permanent_generation() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    # Lists are tracked by the collector (bare object() instances are not).
    keep = [[] for _ in range(1000)]
    try:
        frozen = freeze_startup_heap()
        assert frozen >= len(keep)
        # Frozen objects may die afterwards (the count then drops), but none
        # of them may be handed back to a collected generation.
        assert 0 < gc.get_freeze_count() <= frozen
        tracked = {id(obj) for obj in gc.get_objects()}
        assert not any(id(item) in tracked for item in keep)
        made_after = [[]]
        assert any(obj is made_after for obj in gc.get_objects())
    finally:
        gc.unfreeze()
