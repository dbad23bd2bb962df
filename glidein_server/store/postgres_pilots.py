"""Pilots in the PostgreSQL store: start, heartbeat (sync) and the claim, each one transaction.

The claim reads and locks the best idle candidates with ``FOR UPDATE SKIP LOCKED`` (a few per
free slot), lets matchmaking pack them into the pilot's free capacity, then claims the chosen ones
in one statement (``claim_jobs``): concurrent claimers, on any replica, never wait for each other
and never share a job.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

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
from glidein_client.wire.staging import Network
from glidein_server.policy import site_control
from glidein_server.policy.endoflife import SAMPLES, runtime_ratio
from glidein_server.policy.fairshare import fair_order
from glidein_server.policy.lifecycle import pilot_start_failed, site_health_blend
from glidein_server.policy.matchmaking import Candidate, Capacity, leaves, retiring, select
from glidein_server.policy.site_control import within_room
from glidein_server.store import candidates
from glidein_server.store.postgres_attempts import PostgresAttempts
from glidein_server.store.postgres_base import Connection, Q
from glidein_server.store.postgres_jobs import spec_decoder
from glidein_server.store.postgres_reservations import PostgresReservations
from glidein_server.store.sqlite_pilots import (
    CLAIM_SCAN,
    NOTHING_FREE,
    RATIO_TTL_S,
    RETIRE_REASON,
    TERMINAL_BATCH_STATES,
)

log = logging.getLogger(__name__)


class PostgresPilots(PostgresReservations, PostgresAttempts):
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
        if not (req.started or req.finished or req.held is not None or self._claims(req)):
            # A heartbeat alone is one statement, atomic by itself: no transaction to open.
            return await self._read(self._sync, pilot_id, req, now, lease_s, [])
        health: list[tuple[str, float, float]] = []
        resp = await self._tx(self._sync, pilot_id, req, now, lease_s, health)
        for site, keep, add in health:
            # After the commit: every pilot of a site reports to this one row, which a transaction
            # would keep locked until its claim is done, making the site's pilots wait in line.
            try:
                await self.pool.execute(Q["site_health_apply"], keep, add, site)
            except (OSError, asyncpg.PostgresError) as exc:  # the sync itself is done: the average can wait
                log.warning("could not update the health of site %s: %s", site, exc)
        return resp

    @staticmethod
    def _claims(req: SyncRequest) -> bool:
        return req.claim and not req.draining and (req.free.cpus > 0 or req.want > 0)

    async def _sync(
        self,
        con: Connection,
        pilot_id: int,
        req: SyncRequest,
        now: float,
        lease_s: float,
        health_of: list[tuple[str, float, float]],
    ) -> SyncResponse:
        """The sync in ``con``; the site health update its finished attempts make is left in ``health_of``."""
        health_of.clear()  # a transaction tried again starts afresh
        f = NOTHING_FREE if req.draining else req.free
        lifetime_s = 0.0 if req.draining else req.lifetime_s
        renew = (now + lease_s, now + 0.75 * lease_s)
        tail = (f.cpus, f.memory_mb, f.gpus, f.disk_mb, lifetime_s, now, req.occupancy)
        held = req.held or []
        if req.finished:  # the pilot's state is written after its finished attempts have ended
            head = await con.fetchrow(Q["pilot_sync_head"], pilot_id, held)
        else:  # nothing ends before the write: the pilot read and written in one statement
            head = await con.fetchrow(Q["pilot_sync_head_tail"], *tail, 0, pilot_id, *renew, held)
        if head is None or head[0] != "running":
            raise ConflictError(
                f"Pilot {pilot_id} is not running on the server (it ended or never registered).",
                hint="The pilot should stop; its jobs have been requeued.",
            )
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
        if health:
            health_of.append((site, *site_health_blend(health)))
        jobs: list[ClaimedJob] = []
        control = (SiteMode(mode or SiteMode.OPEN.value), max_cpus, network)
        if self._claims(req):
            total = Capacity(tcpus, tmem, tgpus, tdisk)
            jobs = await self._claim(con, pilot_id, site, req, total, now, lease_s, control)
        leave = None
        if control[0] is SiteMode.DRAINING:
            leave = "its site is draining (the operator's `glidein-server site drain`)"
        elif req.claim and not req.draining and f.cpus > 0 and leaves(lifetime_s, len(jobs)):
            if await con.fetchval(Q["idle_too_long"], int(lifetime_s), f",{site},") is not None:
                leave = RETIRE_REASON
        return SyncResponse(jobs=jobs, cancel=cancel, refused=refused, leave=leave)

    async def _ratio(self, con: Connection, now: float) -> float:
        """What jobs use of their walltime, from the latest successful attempts (re-read every few minutes)."""
        until, ratio = self._runtime_ratio
        if now >= until:
            ratio = runtime_ratio([(r[0], r[1]) for r in await con.fetch(Q["recent_runtimes"], SAMPLES)])
            self._runtime_ratio = (now + RATIO_TTL_S, ratio)
        return ratio

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
        async def tx(con: Connection) -> SyncResponse:
            row = await con.fetchrow(Q["pilot_capacity"], pilot_id)
            if row is None:
                return SyncResponse()
            site, tcpus, tmem, tgpus, tdisk, fcpus, fmem, fgpus, fdisk, lifetime_s, last_seen = row
            lifetime_s -= now - (last_seen or now)
            cancel = [r[0] for r in await con.fetch(Q["pilot_cancels"], pilot_id)]
            if lifetime_s < 1 or (fcpus <= 0 and want <= 0):
                return SyncResponse(cancel=cancel)
            free = Resources(cpus=fcpus, memory_mb=fmem, gpus=fgpus, disk_mb=fdisk)
            req = SyncRequest(free=free, lifetime_s=lifetime_s, want=want, seq=seq)
            jobs = await self._claim(con, pilot_id, site, req, Capacity(tcpus, tmem, tgpus, tdisk), now, lease_s)
            return SyncResponse(jobs=jobs, cancel=cancel)

        return await self._tx(tx)

    async def _claim(
        self,
        con: Connection,
        pilot_id: int,
        site: str,
        req: SyncRequest,
        total: Capacity,
        now: float,
        lease_s: float,
        control: tuple[SiteMode, int | None, str | None] | None = None,
    ) -> list[ClaimedJob]:
        if control is None:
            ctl = await con.fetchrow(Q["site_claim_control"], site)
            assert ctl is not None  # one row, whether or not the site is known
            control = (SiteMode(ctl[0] or SiteMode.OPEN.value), ctl[1], ctl[2])
        mode, max_cpus, network = control
        in_use = await con.fetchval(Q["site_cpus_in_use"], site) if max_cpus is not None else 0
        room = site_control.claim_room(mode, max_cpus, in_use)  # the operator's drain, pause or cap
        if room == 0:
            return []
        f = req.free
        cap = total if req.want > 0 else Capacity(f.cpus, f.memory_mb, f.gpus, f.disk_mb)
        # Rows locked: no more than the pilot can take (every job needs a core), not the queue; each
        # lock costs, and concurrent claimers walk past each other's.
        scan = min(CLAIM_SCAN, cap.cpus + req.want)
        args = (cap.cpus, cap.memory_mb, cap.gpus, cap.disk_mb, int(req.lifetime_s), f",{site},")
        queues: dict[str, list[Candidate]] = {}
        staged = network is not None and Network(network).stages
        if staged:
            for owner, *row in await con.fetch(Q["idle_candidates_staged"], *args, scan, site):
                queues.setdefault(owner, []).append(Candidate(*row))
        else:  # each user's best few: however many jobs one user queued, the others are still seen
            rows: dict[str, list[Any]] = {}
            for owner, *row in await con.fetch(Q["idle_candidates"].replace("{scan}", str(int(scan))), *args):
                rows.setdefault(owner, []).append(row)
            queues = {owner: [Candidate(*r) for r in candidates.best(mine, len(mine))] for owner, mine in rows.items()}
        if not queues:
            return []
        in_use_of = {r[0]: int(r[1]) for r in await con.fetch(Q["busy_cores"])} if len(queues) > 1 else {}
        free = Capacity(f.cpus, f.memory_mb, f.gpus, f.disk_mb)
        ratio = await self._ratio(con, now) if retiring(req.lifetime_s) else 1.0
        # (a job staged at one site only: no reservation, the held job may never be staged here)
        reserve = None if staged else await self._reserve(con, pilot_id, site, total, req.lifetime_s, now)
        chosen = select(
            fair_order(queues, in_use_of, self.shares),
            free,
            total,
            req.lifetime_s,
            req.want,
            reserve=reserve,
            runtime_ratio=ratio,
        )
        if room is not None:
            cpus = {c.job_id: c.cpus for queue in queues.values() for c in queue}
            chosen = within_room([(job_id, cpus[job_id]) for job_id in chosen], room)
        if not chosen:
            return []
        ids = ", ".join(f"${n}::bigint" for n in range(6, 6 + len(chosen)))
        made = {
            job_id: (attempt_id, lease, spec)
            for attempt_id, job_id, lease, spec in await con.fetch(
                Q["claim_jobs"].replace("{ids}", ids), site, pilot_id, now, now + lease_s, req.seq, *chosen
            )
        }
        out: list[ClaimedJob] = []
        for job_id in chosen:  # keep the matchmaking order
            if job_id in made:
                attempt_id, lease, spec = made[job_id]
                out.append(
                    ClaimedJob(attempt_id=attempt_id, job_id=job_id, lease=lease, spec=spec_decoder.decode(spec))
                )
        return out
