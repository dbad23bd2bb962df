"""The serve command's cycle collector: survivors of middle and full collections frozen, cycles freed at the thaw."""

from __future__ import annotations

import asyncio
import gc
import weakref

from glidein_server.collector import long_lived_heap_frozen


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> Node:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a


async def test_what_survives_a_full_collection_is_frozen_and_the_next_ones_skip_it() -> None:
    loop = asyncio.get_running_loop()
    before = gc.get_threshold()
    with long_lived_heap_frozen(loop, thaw_s=3600) as collector:
        assert gc.get_freeze_count() > 0  # the heap at start-up
        assert gc.get_threshold() == (700, 10, 100)
        kept = [Node() for _ in range(5_000)]  # long-lived: a server's connections, say
        frozen = gc.get_freeze_count()
        gc.collect()
        await asyncio.sleep(0)  # the freeze runs in the loop, after the collection
        assert collector.freezes == 1
        assert gc.get_freeze_count() >= frozen + len(kept)
        assert not any(o is kept[0] for o in gc.get_objects(2))  # no longer walked by a full collection
    assert gc.get_freeze_count() == 0  # stopping thaws everything
    assert gc.get_threshold() == before
    assert gc.collect() >= 0 and kept


async def test_what_survives_a_middle_collection_is_frozen_before_any_full_one_walks_it() -> None:
    loop = asyncio.get_running_loop()
    with long_lived_heap_frozen(loop, thaw_s=3600) as collector:
        kept = [Node() for _ in range(5_000)]  # a burst of pilots' new connections, say
        frozen = gc.get_freeze_count()
        gc.collect(1)
        await asyncio.sleep(0)
        assert collector.freezes >= 1
        assert gc.get_freeze_count() >= frozen + len(kept)
        assert not any(o is kept[0] for o in gc.get_objects(2))  # the next full collection skips them
    assert kept


async def test_a_cycle_of_frozen_objects_is_freed_at_the_thaw() -> None:
    loop = asyncio.get_running_loop()
    with long_lived_heap_frozen(loop, thaw_s=3600) as collector:
        held = cycle()
        dead = weakref.ref(held)
        gc.collect()
        await asyncio.sleep(0)  # frozen while alive
        del held
        gc.collect()  # garbage now (nothing refers to it) but frozen: a full collection leaves it
        assert dead() is not None
        collector.thaw_s = 0.0  # due: the next collection's follow-up thaws and walks everything at once
        gc.collect(1)
        await asyncio.sleep(0)
        collector.thaw_s = 3600
        assert dead() is None and collector.freed_at_thaws >= 2
        await asyncio.sleep(0)  # what lived through the thaw's walk is frozen again
        assert gc.get_freeze_count() > 0
