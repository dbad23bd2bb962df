"""Pilots' heartbeats in the PostgreSQL store: those arriving together share one statement.

A sync that only reports what the pilot has free (no start, no finished attempt, no held list, no
claim) is the commonest call a server answers: every running pilot sends one each ``heartbeat_s``.
Each writes its pilot's row, renews the pilot's leases once a quarter is spent, and answers the
attempts to stop and whether the pilot's site is draining. What a statement costs, in the server
and in PostgreSQL, is mostly per statement; so while BEATERS heartbeat statements are in flight,
the heartbeats that arrive wait, and the next statement (``pilot_heartbeats``) serves up to BATCH
of them together, each pilot's part as it would be alone (a pilot not running gets no row, and
its caller alone is refused). No task is made for it: the caller whose statement ends hands the
next turn to the heartbeat waiting longest, which runs it for everyone waiting then. Should a
shared statement fail, each of its heartbeats runs again alone (``pilot_heartbeat``), so that one
heartbeat's error is its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from glidein_client.wire.errors import ConflictError
from glidein_client.wire.schema import SiteMode, SyncRequest, SyncResponse
from glidein_server.store.postgres_base import Connection, PostgresBase, Q
from glidein_server.store.sqlite_pilots import NOTHING_FREE

#: Why a pilot of a draining site is told to leave.
DRAINING_REASON = "its site is draining (the operator's `glidein-server site drain`)"
#: At most this many heartbeats share a statement, and this many such statements run at once.
BATCH = 64
BEATERS = 2
_YOUR_TURN: Any = object()  # what a waiting heartbeat is handed when it is to run the next statement


def only_reports(req: SyncRequest, claims: bool) -> bool:
    """Whether the sync ``req`` is a heartbeat (``claims``: whether it would claim)."""
    return not (req.started or req.finished or req.held is not None or claims)


def not_running(pilot_id: int) -> ConflictError:
    return ConflictError(
        f"Pilot {pilot_id} is not running on the server (it ended or never registered).",
        hint="The pilot should stop; its jobs have been requeued.",
    )


@dataclass(frozen=True, slots=True)
class Beat:
    """One heartbeat's values, as its pilot's row and leases take them."""

    pilot_id: int
    cpus: int
    memory_mb: int
    gpus: int
    disk_mb: int
    lifetime_s: float
    now: float
    occupancy: float
    renew: float  # the new expiry of the pilot's leases
    renew_before: float  # ... of those expiring before this

    @classmethod
    def of(cls, pilot_id: int, req: SyncRequest, now: float, lease_s: float) -> Beat:
        f = NOTHING_FREE if req.draining else req.free
        lifetime_s = 0.0 if req.draining else req.lifetime_s
        return cls(
            *(pilot_id, f.cpus, f.memory_mb, f.gpus, f.disk_mb, lifetime_s, now, req.occupancy),
            *(now + lease_s, now + 0.75 * lease_s),
        )


def answer(beat: Beat, row: Any) -> SyncResponse:
    """The answer to ``beat`` from its row (mode of the site, attempts to stop); None: not running."""
    if row is None:
        raise not_running(beat.pilot_id)
    mode, cancel = row
    return SyncResponse(cancel=cancel, leave=DRAINING_REASON if mode == SiteMode.DRAINING.value else None)


async def heartbeat_alone(con: Connection, beat: Beat) -> SyncResponse:
    b = beat
    row = await con.fetchrow(
        Q["pilot_heartbeat"],
        *(b.cpus, b.memory_mb, b.gpus, b.disk_mb, b.lifetime_s, b.now, b.occupancy),
        *(b.pilot_id, b.renew, b.renew_before),
    )
    return answer(beat, row)


async def heartbeats_together(con: Connection, beats: list[Beat]) -> dict[int, tuple[str | None, list[int]]]:
    """Every pilot's row of ``beats`` (in pilot order: the order rows are locked in everywhere)."""
    ordered = sorted(beats, key=lambda b: b.pilot_id)
    columns = [[getattr(b, f) for b in ordered] for f in Beat.__dataclass_fields__]
    return {r[0]: (r[1], r[2]) for r in await con.fetch(Q["pilot_heartbeats"], *columns)}


class PostgresHeartbeats(PostgresBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._beats: list[tuple[Beat, asyncio.Future[SyncResponse]]] = []
        self._beating = 0  # heartbeat statements in flight, or about to be
        self.largest_heartbeat_batch = 0

    async def _heartbeat(self, pilot_id: int, req: SyncRequest, now: float, lease_s: float) -> SyncResponse:
        beat = Beat.of(pilot_id, req, now, lease_s)
        if self._beating >= BEATERS:
            waiter: asyncio.Future[SyncResponse] = asyncio.get_running_loop().create_future()
            self._beats.append((beat, waiter))
            try:
                got = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result() is _YOUR_TURN:
                    self._next_turn()  # handed the turn just as its caller gave up: pass it on
                raise
            if got is not _YOUR_TURN:
                return got
        else:
            self._beating += 1
        try:
            return await self._beat_together(beat)
        finally:
            self._next_turn()

    def _next_turn(self) -> None:
        """Hand the turn to run a statement to the heartbeat waiting longest, if any waits."""
        while self._beats:
            _, waiter = self._beats.pop(0)
            if not waiter.done():
                waiter.set_result(_YOUR_TURN)
                return
        self._beating -= 1

    async def _beat_together(self, mine: Beat) -> SyncResponse:
        """``mine`` and the heartbeats waiting (BATCH in all), in one statement; ``mine``'s answer."""
        batch, self._beats = self._beats[: BATCH - 1], self._beats[BATCH - 1 :]
        others = [(beat, waiter) for beat, waiter in batch if not waiter.done()]
        if not others:
            return await self._read(heartbeat_alone, mine)
        self.largest_heartbeat_batch = max(self.largest_heartbeat_batch, 1 + len(others))
        try:
            rows = await self._read(heartbeats_together, [mine] + [beat for beat, _ in others])
        except Exception:  # each runs again alone, and fails alone
            for beat, waiter in others:
                try:
                    response = await self._read(heartbeat_alone, beat)
                except Exception as exc:
                    if not waiter.done():
                        waiter.set_exception(exc)
                else:
                    if not waiter.done():
                        waiter.set_result(response)
            return await self._read(heartbeat_alone, mine)
        for beat, waiter in others:
            if not waiter.done():
                try:
                    waiter.set_result(answer(beat, rows.get(beat.pilot_id)))
                except ConflictError as exc:
                    waiter.set_exception(exc)
        return answer(mine, rows.get(mine.pilot_id))
