"""Python's cycle collector in a long-running server: long-lived objects kept out of its full walks.

A full collection walks every object the collector tracks that is not frozen, and stalls every
request meanwhile. A server's heap grows with the pilots it serves (each kept-alive connection, its
token and its wake-ups are some fifty objects: 6,250 pilots make ~300,000), and a walk of the
objects that came since the last one stalled a ramp of pilots' claims for 0.1 to 0.3 s (about
1 ms per 1,000 objects), which is the slowest 1 % of their first claims.

So at start-up, and after every middle and full collection, what survived is frozen
(``gc.freeze``, a constant-time splice): an object that outlived two collections is left alone by
the collector from then on, and a full collection walks only what came since the last middle one.
Objects that die are still freed by their reference counts; only cycles among frozen objects wait,
until the heap is thawed every ``THAW_S`` and walked in full once, at once. (In a benchmark run of
6,250 pilots' claims, heartbeats and finished jobs, the thaws freed nothing: 312,000 objects frozen,
none of them garbage.) Full collections also come ten times less often than Python's default.
The younger generations keep Python's thresholds (larger ones make their walks the long ones).
The ``serve`` command installs this; a process that hosts a server among other things (the tests)
keeps Python's defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any

#: The frozen heap is thawed this often (seconds), so cycles among long-lived objects are collected.
THAW_S = 900.0
#: The collector's thresholds: allocations between young collections, young collections between
#: middle ones, middle ones between full ones (Python's defaults: 700, 10, 10).
YOUNG, MIDDLE, FULL = 700, 10, 100


class Collector:
    """Freezes what survives each middle and full collection (see the module's doc); thaws every ``thaw_s``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thaw_s: float = THAW_S) -> None:
        self.loop = loop
        self.thaw_s = thaw_s
        self.thawed_at = time.monotonic()
        self.freezes = 0
        self.freed_at_thaws = 0  # cycles among frozen objects, freed when the heap was thawed
        self._thresholds = gc.get_threshold()

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG, MIDDLE, FULL)
        gc.callbacks.append(self._collected)

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._collected)
        gc.set_threshold(*self._thresholds)
        gc.unfreeze()

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        """A collection's callback, in whichever thread it ran: after a middle or full one, freeze
        soon, in the loop."""
        if phase == "stop" and info.get("generation", 0) >= 1:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
                self.loop.call_soon_threadsafe(self._freeze)

    def _freeze(self) -> None:
        if time.monotonic() - self.thawed_at >= self.thaw_s:
            self.thawed_at = time.monotonic()
            gc.unfreeze()
            self.freed_at_thaws += gc.collect()  # everything walked once; its callback freezes what lives
            return
        gc.freeze()
        self.freezes += 1


@contextlib.contextmanager
def long_lived_heap_frozen(loop: asyncio.AbstractEventLoop, thaw_s: float = THAW_S) -> Iterator[Collector]:
    """The :class:`Collector` installed for a block (the ``serve`` command's serving)."""
    collector = Collector(loop, thaw_s)
    collector.start()
    try:
        yield collector
    finally:
        collector.stop()
