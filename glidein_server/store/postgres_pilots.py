"""Pilots in the PostgreSQL store: start, heartbeat (sync) and the claim.

A sync that writes (starts, finished attempts, a claim), and a waiting pilot's claim when work
arrives (``claim_more``: a burst of them when a submit wakes every waiting pilot), waits for a
transaction it shares with the other such calls waiting then, up to BATCH of them, with RUNNERS
such transactions at a time: what a statement costs PostgreSQL is mostly per statement, and their
claims are made together (:mod:`postgres_claims`). Should one of them fail, the transaction is
rolled back and each call runs again alone, so one call's error is its own. A pilot that is not
running is refused before its sync writes anything, and the others go on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from glidein_client.wire.errors import ConflictError, NotFoundError
from glidein_client.wire.schema import (
    ClaimedJob,
    PilotRegister,
    Refusal,
    Resources,
    SiteMode,
    SyncRequest,
    SyncResponse,
)
from glidein_server.policy.lifecycle import pilot_start_failed, site_health_blend
from glidein_server.policy.matchmaking import Capacity, leaves
from glidein_server.store.postgres_base import Connection, Q
from glidein_server.store.postgres_claims import Ask, PostgresClaims
from glidein_server.store.postgres_heartbeat import DRAINING_REASON, PostgresHeartbeats, not_running, only_reports
from glidein_server.store.sqlite_pilots import NOTHING_FREE, RETIRE_REASON, TERMINAL_BATCH_STATES

log = logging.getLogger(__name__)
#: At most this many syncs share one transaction, and this many such transactions run at once.
BATCH = 16
RUNNERS = 2


@dataclass(frozen=True)
class Sync:
    pilot_id: int
    req: SyncRequest
    now: float
    lease_s: float


@dataclass(frozen=True)
class More:
    """A waiting pilot's claim when work arrives (``claim_more``)."""

    pilot_id: int
    want: int
    now: float
    lease_s: float
    seq: int | None


@dataclass(frozen=True)
class Pending:
    """A call's work done up to its claim, and what its answer needs."""

    ask: Ask | None  # None: it claims nothing
    refused: list[Refusal]
    cancel: list[int]
    health: list[float]  # what its finished attempts add to the site's health average
    sync: bool = True  # a sync (which may be told to leave), not a waiting pilot's claim


#: A sync's answer (or the error that refused it) and the (site, value) health samples it adds.
Outcome = tuple[SyncResponse | Exception, list[tuple[str, float]]]


class PostgresPilots(PostgresClaims, PostgresHeartbeats):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting: list[tuple[Sync | More, asyncio.Future[SyncResponse]]] = []
        self._runners = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def new_pilot(self, site: str, now: float) -> int:
        return int(await self.pool.fetchval(Q["pilot_insert"], site, now))

    async def pilot_states(self, site: str, states: dict[int, str], now: float, failure: str | None = None) -> int:
        async def tx(con: Connection) -> int:
            if failure:
                await con.execute(Q["site_failure_set"], site, failure[:1000])
            ended = 0
            for pid, state in sorted(states.items()):
                if state not in TERMINAL_BATCH_STATES:
                    continue
                row = await con.fetchrow(Q["pilot_state_for_update"], pid)
                if row is None or row[1] != site or row[0] == "ended":
                    continue
                if pilot_start_failed(row[0]):
                    await con.execute(Q["site_start_failed"], site, now)
                await self._end_pilot(con, pid, f"the batch system reports the pilot {state}", now)
                ended += 1
            return ended

        return await self._tx(tx)

    async def register_pilot(self, pilot_id: int, req: PilotRegister, now: float) -> None:
        r = req.resources
        state = "running" if req.selftest_ok else "ended"
        reason = None if req.selftest_ok else f"self-test failed: {req.selftest_reason}"

        async def tx(con: Connection) -> None:
            row = await con.fetchrow(Q["pilot_state_for_update"], pilot_id)
            if row is None:
                raise NotFoundError(f"Pilot {pilot_id} is not known.")
            if row[0] == "ended":
                raise ConflictError(f"Pilot {pilot_id} has already ended; a pilot token serves one pilot.")
            await con.execute(
                Q["pilot_register"],
                *(state, req.batch_id, req.host, r.cpus, r.memory_mb, r.gpus, r.disk_mb, req.end_time),
                *(max(0.0, req.end_time - now), now, reason, pilot_id),
            )
            if req.selftest_ok:
                await con.execute(Q["site_start_ok"], pilot_id)
            else:
                await con.execute(Q["site_start_failed"], row[1], now)

        await self._tx(tx)

    async def sync(self, pilot_id: int, req: SyncRequest, now: float, lease_s: float) -> SyncResponse:
        if only_reports(req, self._claims(req)):  # a heartbeat: one statement, maybe shared
            return await self._heartbeat(pilot_id, req, now, lease_s)
        return await self._queued(Sync(pilot_id, req, now, lease_s))

    async def _queued(self, call: Sync | More) -> SyncResponse:
        """Run ``call`` in the next transaction that has room, with the others waiting then."""
        future: asyncio.Future[SyncResponse] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, future))
        if self._runners < RUNNERS:
            self._runners += 1
            task = asyncio.create_task(self._run_syncs())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _run_syncs(self) -> None:
        """Run the waiting calls, up to BATCH at a time in one transaction."""
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
                try:
                    await self._run_batch([(call, future) for call, future in batch if not future.done()])
                finally:  # (only when the server stops does a batch end unanswered)
                    for _, future in batch:
                        if not future.done():
                            future.cancel()
        finally:
            self._runners -= 1

    async def _run_batch(self, batch: list[tuple[Sync | More, asyncio.Future[SyncResponse]]]) -> None:
        if not batch:
            return
        try:
            outcomes = await self._tx(self._sync_all, [call for call, _ in batch])
        except Exception as exc:  # one call's failure: each runs again alone, and fails alone
            outcomes = [(exc, [])] if len(batch) == 1 else [await self._alone(call) for call, _ in batch]
        await self._apply_health(outcomes)
        for (_, future), (result, _) in zip(batch, outcomes, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _alone(self, call: Sync | More) -> Outcome:
        try:
            return (await self._tx(self._sync_all, [call]))[0]
        except Exception as exc:
            return exc, []

    async def _apply_health(self, outcomes: list[Outcome]) -> None:
        """After the commit: every pilot of a site reports to this one row, which a transaction would
        keep locked until its claims are done, making the site's pilots wait in line."""
        values: dict[str, list[float]] = {}
        for _, health in outcomes:
            for site, value in health:
                values.setdefault(site, []).append(value)
        for site, seen in values.items():
            try:
                await self.pool.execute(Q["site_health_apply"], *site_health_blend(seen), site)
            except Exception as exc:  # the syncs themselves are done: the average can wait
                log.warning("could not update the health of site %s: %s", site, exc)

    @staticmethod
    def _claims(req: SyncRequest) -> bool:
        return req.claim and not req.draining and (req.free.cpus > 0 or req.want > 0)

    async def _sync_all(self, con: Connection, calls: list[Sync | More]) -> list[Outcome]:
        """The calls in ``con``, their claims made together; each one's response, or the error that
        refused it before it wrote anything, and the site health values its finished attempts add."""
        out: list[Outcome] = [(ConflictError("not run"), [])] * len(calls)
        ready: list[tuple[int, Pending]] = []
        order = sorted(range(len(calls)), key=lambda i: calls[i].pilot_id)  # one lock order for all
        heads = await self._heads(
            con, [(i, c) for i in order if isinstance(c := calls[i], Sync) and not c.req.finished]
        )
        for i in order:
            call = calls[i]
            try:
                if isinstance(call, More):
                    ready.append((i, await self._before_more(con, call)))
                else:
                    ready.append((i, await self._before_claim(con, call, heads.get(i))))
            except ConflictError as exc:
                out[i] = (exc, [])
        claiming = [(i, p.ask) for i, p in ready if p.ask is not None and self._claims(p.ask.req)]
        got: dict[int, list[ClaimedJob]] = {}
        if claiming:
            jobs = await self._claim_many(con, [ask for _, ask in claiming], calls[0].lease_s)
            got = {i: mine for (i, _), mine in zip(claiming, jobs, strict=True)}
        for i, p in ready:
            site = p.ask.site if p.ask is not None else ""
            out[i] = (await self._after_claim(con, p, got.get(i, [])), [(site, h) for h in p.health])
        return out

    async def _heads(self, con: Connection, calls: list[tuple[int, Sync]]) -> dict[int, Any]:
        """For syncs that end no attempt, all in one statement: each pilot read as it was and written
        (what it has free, its leases renewed), by the sync's place in ``calls``. The time is the
        latest sync's."""
        if not calls:
            return {}
        now = max(c.now for _, c in calls)
        lease_s = calls[0][1].lease_s
        values: list[Any] = []
        for _, c in calls:
            f = NOTHING_FREE if c.req.draining else c.req.free
            lifetime_s = 0.0 if c.req.draining else c.req.lifetime_s
            values += (
                c.pilot_id,
                f.cpus,
                f.memory_mb,
                f.gpus,
                f.disk_mb,
                lifetime_s,
                c.req.occupancy,
                c.req.held or [],
            )
        size = 1 << (len(calls) - 1).bit_length()  # rows of nulls, which match no pilot, up to a power of two
        values += [None] * 8 * (size - len(calls))
        rows = ", ".join(
            f"(${n}::bigint, ${n + 1}::int, ${n + 2}::bigint, ${n + 3}::int, ${n + 4}::bigint, ${n + 5}::float8, "
            f"${n + 6}::float8, ${n + 7}::bigint[], {k})"
            for k, n in enumerate(range(4, 4 + 8 * size, 8))
        )
        sql = Q["pilot_sync_heads"].replace("{rows}", rows)
        found = await con.fetch(sql, now, now + lease_s, now + 0.75 * lease_s, *values)
        return {calls[r[0]][0]: r[1:] for r in found}

    async def _before_claim(self, con: Connection, call: Sync, head: Any) -> Pending:
        """A sync's work up to its claim: the pilot's state (``head``, read already unless it ends
        attempts), its starts and finished attempts."""
        pilot_id, req, now = call.pilot_id, call.req, call.now
        f = NOTHING_FREE if req.draining else req.free
        lifetime_s = 0.0 if req.draining else req.lifetime_s
        renew = (now + call.lease_s, now + 0.75 * call.lease_s)
        tail = (f.cpus, f.memory_mb, f.gpus, f.disk_mb, lifetime_s, now, req.occupancy)
        if req.finished:  # the pilot's state is written after its finished attempts have ended
            head = await con.fetchrow(Q["pilot_sync_head"], pilot_id, req.held or [])
        if head is None or head[0] != "running":
            raise not_running(pilot_id)
        site, tcpus, tmem, tgpus, tdisk, mode, max_cpus, network = head[1:9]
        refused = await self._starts(con, pilot_id, req, now)
        ran = 0
        health: list[float] = []
        for attempt_id, reason in await self._finish_all(con, pilot_id, req.finished, now, health):
            if reason:
                refused.append(Refusal(attempt_id=attempt_id, reason=reason))
            else:
                ran += 1
        dropped: set[int] = set()
        if req.held is not None and head[10]:  # an active attempt the pilot does not hold: was it lost?
            dropped = await self._drop_lost_claims(con, pilot_id, set(req.held), req.seq, now)
        if req.finished:
            cancel = [r[0] for r in await con.fetch(Q["pilot_sync_tail"], *tail, ran, pilot_id, *renew)]
        else:
            cancel = [a for a in head[9] if a not in dropped]
        control = (SiteMode(mode or SiteMode.OPEN.value), max_cpus, network)
        ask = Ask(pilot_id, site, req, Capacity(tcpus, tmem, tgpus, tdisk), control, now)
        return Pending(ask, refused, cancel, health)

    async def _after_claim(self, con: Connection, p: Pending, jobs: list[ClaimedJob]) -> SyncResponse:
        """The call's answer, once its claim (if any) is made: whether the pilot should leave."""
        leave = None
        if p.sync and p.ask is not None:
            req, site = p.ask.req, p.ask.site
            if p.ask.control[0] is SiteMode.DRAINING:
                leave = DRAINING_REASON
            elif self._claims(req) and req.free.cpus > 0 and leaves(req.lifetime_s, len(jobs)):
                if await con.fetchval(Q["idle_too_long"], int(req.lifetime_s), f",{site},") is not None:
                    leave = RETIRE_REASON
        return SyncResponse(jobs=jobs, cancel=p.cancel, refused=p.refused, leave=leave)

    async def _before_more(self, con: Connection, call: More) -> Pending:
        """A waiting pilot's claim up to the claim: what it has free now, and the attempts to stop."""
        row = await con.fetchrow(Q["pilot_capacity"], call.pilot_id)
        if row is None:
            return Pending(None, [], [], [], sync=False)
        site, tcpus, tmem, tgpus, tdisk, fcpus, fmem, fgpus, fdisk, lifetime_s, last_seen = row
        lifetime_s -= call.now - (last_seen or call.now)
        cancel = [r[0] for r in await con.fetch(Q["pilot_cancels"], call.pilot_id)]
        if lifetime_s < 1 or (fcpus <= 0 and call.want <= 0):
            return Pending(None, [], cancel, [], sync=False)
        free = Resources(cpus=fcpus, memory_mb=fmem, gpus=fgpus, disk_mb=fdisk)
        req = SyncRequest(free=free, lifetime_s=lifetime_s, want=call.want, seq=call.seq)
        ctl = await con.fetchrow(Q["site_claim_control"], site)
        assert ctl is not None  # one row, whether or not the site is known
        control = (SiteMode(ctl[0] or SiteMode.OPEN.value), ctl[1], ctl[2])
        ask = Ask(call.pilot_id, site, req, Capacity(tcpus, tmem, tgpus, tdisk), control, call.now)
        return Pending(ask, [], cancel, [], sync=False)

    @staticmethod
    async def _starts(con: Connection, pilot_id: int, req: SyncRequest, now: float) -> list[Refusal]:
        refused: list[Refusal] = []
        finished_ids = {f.attempt_id for f in req.finished}
        for ref in req.started:
            if ref.attempt_id in finished_ids:
                continue
            if await con.fetchrow(Q["attempt_start"], now, ref.attempt_id, ref.lease, pilot_id) is None:
                refused.append(Refusal(attempt_id=ref.attempt_id, reason="stale or unknown lease"))
        return refused

    async def claim_more(
        self, pilot_id: int, want: int, now: float, lease_s: float, *, seq: int | None = None
    ) -> SyncResponse:
        return await self._queued(More(pilot_id, want, now, lease_s, seq))
