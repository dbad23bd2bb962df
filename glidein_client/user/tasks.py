"""Running many small awaitables at once, a bounded number at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
A = TypeVar("A")


async def bounded(limit: int, fn: Callable[[A], Awaitable[T]], items: Iterable[A]) -> list[T]:
    """``fn(item)`` for every item, at most ``limit`` at once; the first error cancels the rest."""
    sem = asyncio.Semaphore(limit)

    async def one(item: A) -> T:
        async with sem:
            return await fn(item)

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
