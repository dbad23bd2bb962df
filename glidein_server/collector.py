"""Python's cycle collector in a long-running server: long-lived objects kept out of its full walks.

A full collection walks every object the collector tracks, and runs each time that heap has grown
by a quarter since the last one. A server's heap grows with the pilots it serves (each kept-alive
connection, its token and its wake-ups are some fifty objects: 6,250 pilots make ~300,000), and a
walk of it stalls every request for 0.2 to 0.8 s on a busy 2-core machine, which is the slowest
1 % of a ramp of pilots' claims.

So at start-up, and after every full collection, what survived is frozen (``gc.freeze``): the
collector leaves it alone, and the next full collection walks only what came since. Objects that
die are still freed by their reference counts; only cycles among frozen objects wait, until the
heap is thawed every ``THAW_S`` (one full walk then). Full collections also come ten times less
often: in a ramp of 6,250 pilots they found nothing to free, and the objects that the dozens of
requests in flight get promoted to the oldest generation die by their reference counts anyway.
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
    """Freezes what survives each full collection (see the module's doc); thaws every ``thaw_s``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thaw_s: float = THAW_S) -> None:
        self.loop = loop
        self.thaw_s = thaw_s
        self.thawed_at = time.monotonic()
        self.freezes = 0
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
        """A collection's callback, in whichever thread it ran: after a full one, freeze soon, in the loop."""
        if phase == "stop" and info.get("generation") == 2:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
                self.loop.call_soon_threadsafe(self._freeze)

    def _freeze(self) -> None:
        if time.monotonic() - self.thawed_at >= self.thaw_s:
            self.thawed_at = time.monotonic()
            gc.unfreeze()  # the next full collection walks everything once
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
