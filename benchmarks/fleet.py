"""The simulated pilots of the benchmarks: a fleet minted by one site client that registers, claims,
heartbeats and finishes jobs through the light HTTP client of :mod:`benchmarks.pilot_http`, 32 at
a time, as real pilots' requests."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.pilot_http import ANSWER, Held, Link
from glidein_client.wire.api import ApiClient
from glidein_client.wire.codec import encode
from glidein_client.wire.schema import Finish, Outcome, PilotRegister, PilotShape, Resources, SyncRequest

CONCURRENCY = 32
SHAPE = PilotShape(cpus=8, memory_mb=32_000, disk_mb=100_000, walltime_s=86_400)
FREE = Resources(cpus=8, memory_mb=32_000, disk_mb=100_000)


async def pool(items: list[Any], fn: Callable[[Any], Awaitable[Any]], concurrency: int = CONCURRENCY) -> list[Any]:
    """Run ``fn`` over ``items`` with ``concurrency`` at a time; results in order."""
    results: list[Any] = [None] * len(items)
    queue = list(enumerate(items))[::-1]

    async def worker() -> None:
        while queue:
            i, item = queue.pop()
            results[i] = await fn(item)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


REGISTER = encode(PilotRegister(resources=FREE, end_time=time.time() + 80_000))
CLAIM = encode(SyncRequest(free=FREE, lifetime_s=80_000))
HEARTBEAT = encode(SyncRequest(free=Resources(cpus=0, memory_mb=0), lifetime_s=80_000, claim=False))


class Fleet:
    """Pilots minted by one site client and spread over the server replicas' URLs, round robin.

    They speak through :mod:`benchmarks.pilot_http`: each sync is one ``POST`` with the pilot's own
    token over its own kept-alive connection, written and read by a client that spends as little of
    the server's cores per sync as it can (see that module)."""

    def __init__(self, links: list[Link]) -> None:
        self.links = links
        self.syncs = [(link, link.head("/pilot/sync")) for link in links]
        self.held: dict[int, list[Held]] = {}
        self.first: list[float] = []

    @classmethod
    async def start(cls, sapi: ApiClient, urls: list[str], n: int) -> Fleet:
        grants = await pool(list(range(n)), lambda _: sapi.new_pilot("bench"))
        links = [Link(urls[i % len(urls)], g.token) for i, g in enumerate(grants)]
        await pool(links, lambda link: link.post(link.head("/pilot/register"), REGISTER))
        # Everything made so far lives until the fleet closes: kept out of the collector's walks, so
        # that no full collection stalls the pilots here in the middle of a measured phase.
        gc.collect()
        gc.freeze()
        return cls(links)

    async def close(self) -> None:
        for link in self.links:
            await link.aclose()
        gc.unfreeze()

    async def claim(self) -> tuple[int, float]:
        """Every pilot's first claim, 32 at once: (jobs claimed, seconds)."""

        async def one(i: int) -> int:
            link, head = self.syncs[i]
            t = time.perf_counter()
            answer = await link.post(head, CLAIM)
            self.first.append(time.perf_counter() - t)
            jobs = self.held[i] = ANSWER.decode(answer).jobs
            return len(jobs)

        t0 = time.perf_counter()
        claimed = sum(await pool(list(range(len(self.syncs))), one))
        return claimed, time.perf_counter() - t0

    async def heartbeats(self) -> float:
        t0 = time.perf_counter()
        await pool(self.syncs, lambda s: s[0].post(s[1], HEARTBEAT))
        return time.perf_counter() - t0

    async def finish_and_claim(self, rounds: int) -> tuple[int, float]:
        async def one(i: int) -> int:
            link, head = self.syncs[i]
            fins = [Finish(attempt_id=j.attempt_id, lease=j.lease, outcome=Outcome.DONE) for j in self.held[i]]
            answer = await link.post(head, encode(SyncRequest(finished=fins, free=FREE, lifetime_s=80_000)))
            self.held[i] = ANSWER.decode(answer).jobs
            return len(fins)

        t0 = time.perf_counter()
        finished = sum(await pool(list(range(min(len(self.syncs), 512))) * rounds, one))
        return finished, time.perf_counter() - t0
