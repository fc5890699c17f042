"""The worker's GC policy: survivors frozen, collections counted, everything unfrozen after."""

from __future__ import annotations

import gc
import weakref

from simulator.heap import HeapKeeper


async def test_freezes_survivors_counts_collections_and_unfreezes_at_the_end() -> None:
    kept = [[i] for i in range(1000)]  # survivors: frozen by the keeper
    async with HeapKeeper(interval_s=None) as keeper:
        keeper.freeze()
        assert gc.get_freeze_count() >= len(kept)
        gc.collect()
    figures = keeper.figures()
    assert figures.freezes == 1
    assert figures.collections[1] >= 1 and figures.collections[2] >= 1  # the freeze's, ours
    assert figures.frozen_objects >= len(kept)
    assert gc.get_freeze_count() == 0  # a later run in the same process gets its memory back
    assert keeper._on_gc not in gc.callbacks
    assert set(figures.to_json()) == {"freezes", "collections", "max_pause_ms", "frozen_objects"}


async def test_cyclic_garbage_born_before_a_freeze_is_collected_not_frozen() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    async with HeapKeeper(interval_s=None) as keeper:
        node = Node()
        gone = weakref.ref(node)
        del node  # a cycle: garbage, but only the collector can free it
        assert gone() is not None
        keeper.freeze()  # collects the young generations first
        assert gone() is None
