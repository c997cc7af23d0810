"""service/serve.py's freeze_heap: what is alive at the end of start-up is moved out of the
cyclic collector's reach, so a full collection no longer walks it."""

from __future__ import annotations

import gc
import weakref

from horde_scanner.service.serve import freeze_heap


def test_a_full_collection_no_longer_walks_the_start_up_heap() -> None:
    held = [{"n": i, "peer": [i]} for i in range(200_000)]  # a heap of tracked objects
    try:
        walked_before = len(gc.get_objects())  # what a full collection walks
        frozen = freeze_heap()
        walked_after = len(gc.get_objects())
        assert walked_before >= 400_000
        assert frozen >= 400_000 and gc.get_freeze_count() == frozen
        assert walked_after < 10_000, walked_after
        made_later = [[i] for i in range(1000)]  # what is made later is walked as before
        assert len(gc.get_objects()) >= walked_after + 1000
        del made_later
    finally:
        gc.unfreeze()
        del held


def test_garbage_in_cycles_from_start_up_is_collected_not_frozen() -> None:
    class Node:
        peer: object

    a, b = Node(), Node()
    a.peer, b.peer = b, a
    gone = weakref.ref(a)
    del a, b  # a cycle: only the collector frees it
    try:
        freeze_heap()
        assert gone() is None
    finally:
        gc.unfreeze()
