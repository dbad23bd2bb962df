"""News for one pilot while its sync waits (a long poll): a cancel of one of its jobs, room freed
by a report it sent beside the poll, or new work. The server answers the waiting sync with it at
once, so a busy pilot hears a cancel within a round trip instead of at its next heartbeat."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from glidein_client.wire.schema import JobView, SyncRequest, SyncResponse
from glidein_server.store.base import Store


class WorkSignal(Protocol):
    async def wait(self, timeout_s: float, since: int | None = None) -> bool: ...


class PilotWakeups:
    """Wakes one pilot's waiting long poll: a cancel of one of its jobs, or a report it sent beside
    the poll (which may free cores), so a busy pilot hears news within a round trip, not a heartbeat."""

    def __init__(self) -> None:
        self._waiting: dict[int, list[asyncio.Future[None]]] = {}
        self._wakes: dict[int, int] = {}  # wake-ups per pilot, so none is lost between a request and its wait

    def mark(self, pilot_id: int) -> int:
        """Where the pilot's wake-ups stand; a wait ``since`` this mark returns at once after a later wake."""
        return self._wakes.get(pilot_id, 0)

    def forget(self, pilot_id: int) -> None:
        self._waiting.pop(pilot_id, None)
        self._wakes.pop(pilot_id, None)

    def wake(self, pilot_id: int) -> None:
        self._wakes[pilot_id] = self._wakes.get(pilot_id, 0) + 1
        for fut in self._waiting.pop(pilot_id, []):
            if not fut.done():
                fut.set_result(None)

    def wake_all(self) -> None:
        for pilot_id in list(self._waiting):
            self.wake(pilot_id)

    async def wait(self, pilot_id: int, timeout_s: float, work: WorkSignal | None = None, since: int = -1) -> bool:
        """True when woken (or, with ``work``, when new work arrived) before ``timeout_s``; at once
        when the pilot was woken after the mark ``since``."""
        if since >= 0 and self._wakes.get(pilot_id, 0) != since:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(pilot_id, []).append(fut)
        waits: list[asyncio.Future[Any]] = [fut]
        if work is not None:
            waits.append(asyncio.ensure_future(work.wait(timeout_s)))
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
            mine = self._waiting.get(pilot_id)
            if mine is not None and fut in mine:
                mine.remove(fut)
                if not mine:
                    del self._waiting[pilot_id]
        return any(not w.cancelled() and w.result() is not False for w in done)


class PilotNews:
    """What the API does with pilots' news: wake the right waiting sync, and hold syncs until news."""

    def __init__(self, store: Store, pilots: PilotWakeups, work: WorkSignal, *, wait_s: float, lease_s: float) -> None:
        self.store, self.pilots, self.work = store, pilots, work
        self.wait_s, self.lease_s = wait_s, lease_s  # the longest a sync is held; the lease of a claim

    async def cancelled(self, job: JobView) -> JobView:
        """The pilots running ``job`` hear of its cancel at once: their waiting sync answers with it."""
        for attempt in await self.store.attempts_of(job.id):
            if attempt.finished_at is None:
                self.pilots.wake(attempt.pilot_id)
        return job

    async def answer(self, pilot_id: int, req: SyncRequest, resp: SyncResponse, mark: int) -> SyncResponse:
        """The answer to a pilot's sync (``resp``, from the store): a report sent beside the pilot's long
        poll wakes that poll (what it frees can be claimed now); a sync that found nothing waits for news."""
        if req.finished and not req.claim:
            self.pilots.wake(pilot_id)
        if not req.claim or resp.jobs or resp.cancel or resp.leave or req.wait_s <= 0:
            return resp
        wait_s = min(req.wait_s, self.wait_s)
        return await self._long_poll(pilot_id, req, resp, mark=mark, wait_s=wait_s)

    async def _long_poll(
        self, pilot_id: int, req: SyncRequest, resp: SyncResponse, *, mark: int, wait_s: float
    ) -> SyncResponse:
        """Hold a pilot's sync until there is news for it: work it can claim (unless it is stopping),
        a cancel of one of its jobs, or room freed by a report it sent beside this poll. A wake-up
        that brings nothing for this pilot (another took the work) keeps it waiting, so the pilot is
        always listening. ``mark`` is where its wake-ups stood when the sync arrived."""
        work = None if req.draining else self.work
        deadline = time.monotonic() + wait_s
        while (left_s := deadline - time.monotonic()) > 0:
            if not await self.pilots.wait(pilot_id, left_s, work, since=mark):
                break
            mark = self.pilots.mark(pilot_id)
            more = await self.store.claim_more(pilot_id, req.want, time.time(), self.lease_s, seq=req.seq)
            if more.jobs or more.cancel:
                return SyncResponse(jobs=more.jobs, cancel=more.cancel, refused=resp.refused)
        return resp
