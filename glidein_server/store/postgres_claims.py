"""Claims in the PostgreSQL store: the jobs several pilots get, chosen together in one transaction.

The syncs that run together (:mod:`postgres_pilots` queues them) claim together: the pilots of one
site read one pool of candidates, the best idle jobs of each user and shape locked with ``FOR UPDATE
SKIP LOCKED`` (enough for all of them: every job needs a core), matchmaking then serves each pilot
in turn from what the ones before it left, and one statement claims every chosen job. What a
claim costs PostgreSQL is mostly per statement (the read, the update, the counting trigger), so
sixteen pilots claiming together cost little more than one. Concurrent claimers, on any replica,
never wait for each other and never share a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from glidein_client.wire.schema import ClaimedJob, SiteMode, SyncRequest
from glidein_client.wire.staging import Network
from glidein_server.policy import site_control
from glidein_server.policy.endoflife import SAMPLES, runtime_ratio
from glidein_server.policy.fairshare import fair_order
from glidein_server.policy.matchmaking import Candidate, Capacity, retiring, select
from glidein_server.policy.site_control import within_room
from glidein_server.store import candidates
from glidein_server.store.postgres_attempts import PostgresAttempts
from glidein_server.store.postgres_base import Connection, Q
from glidein_server.store.postgres_jobs import spec_decoder
from glidein_server.store.postgres_reservations import PostgresReservations
from glidein_server.store.sqlite_pilots import CLAIM_SCAN, RATIO_TTL_S

#: At most this many jobs are claimed by one statement (four parameters each; PostgreSQL takes 32,767).
CLAIM_ROWS = 1024
#: The site's mode, its cap on cores in use (None: none) and its network, as the operator set them.
Control = tuple[SiteMode, int | None, str | None]


@dataclass(frozen=True)
class Ask:
    """One pilot's claim: ``req`` says what it has free, for how long, and its backlog (``want``)."""

    pilot_id: int
    site: str
    req: SyncRequest
    total: Capacity
    control: Control
    now: float

    @property
    def cap(self) -> Capacity:
        """The largest job it can take: anything that fits its whole size when it has a backlog."""
        f = self.req.free
        return self.total if self.req.want > 0 else Capacity(f.cpus, f.memory_mb, f.gpus, f.disk_mb)

    @property
    def staged(self) -> bool:
        network = self.control[2]
        return network is not None and Network(network).stages


def pow2(n: int) -> int:
    """``n`` rounded up to a power of two (0 stays 0)."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def scan_for(asks: list[Ask]) -> int:
    """How many of each (user, shape)'s best jobs to lock for ``asks``: no more than they can take
    together, rounded up to a power of two (the number is written into the statement: a few
    prepared statements, not one per sum)."""
    return min(CLAIM_SCAN, pow2(max(1, sum(a.cap.cpus + a.req.want for a in asks))))


def shape_limit(asks: list[Ask]) -> str:
    """The candidate read's limit for each (user, shape ``s``) of ``asks``, in SQL: the jobs of that
    shape they can take together (their cores over the shape's, plus their backlogs), no more than
    :func:`scan_for`; each sum a power of two, so a few prepared statements serve every claim."""
    cores, backlog = pow2(sum(a.cap.cpus for a in asks)), pow2(sum(a.req.want for a in asks))
    return f"least({scan_for(asks)}, {cores} / s.cpus + {backlog})"


class PostgresClaims(PostgresReservations, PostgresAttempts):
    async def _claim_many(self, con: Connection, asks: list[Ask], lease_s: float) -> list[list[ClaimedJob]]:
        """What each of ``asks`` gets, in its matchmaking order (inside the caller's transaction);
        the attempts are made as of the latest ask's time."""
        chosen: list[list[int]] = [[] for _ in asks]
        by_site: dict[tuple[str, bool], list[int]] = {}
        for i, ask in enumerate(asks):
            by_site.setdefault((ask.site, ask.staged), []).append(i)
        for _, members in sorted(by_site.items()):  # one lock order for capped sites
            picks = await self._pick(con, [asks[i] for i in members])
            for i, ids in zip(members, picks, strict=True):
                chosen[i] = ids
        now = max(a.now for a in asks)
        rows = [
            (job_id, asks[i].pilot_id, asks[i].req.seq, asks[i].site) for i, ids in enumerate(chosen) for job_id in ids
        ]
        made: dict[int, ClaimedJob] = {}
        for start in range(0, len(rows), CLAIM_ROWS):
            part: list[tuple[int | None, int | None, int | None, str | None]] = list(rows[start : start + CLAIM_ROWS])
            # rows of nulls, which claim nothing, up to a power of two: a few prepared statements, not one per count
            part += [(None, None, None, None)] * ((1 << (len(part) - 1).bit_length()) - len(part))
            values = ", ".join(
                f"(${n}::bigint, ${n + 1}::bigint, ${n + 2}::bigint, ${n + 3}::text)"
                for n in range(3, 3 + 4 * len(part), 4)
            )
            sql = Q["claim_jobs"].replace("{rows}", values)
            for attempt_id, job_id, lease, spec in await con.fetch(
                sql, now, now + lease_s, *(v for r in part for v in r)
            ):
                made[job_id] = ClaimedJob(
                    attempt_id=attempt_id, job_id=job_id, lease=lease, spec=spec_decoder.decode(spec)
                )
        return [[made[job_id] for job_id in ids if job_id in made] for ids in chosen]

    async def _pick(self, con: Connection, asks: list[Ask]) -> list[list[int]]:
        """The ids each of ``asks`` (pilots of one site) gets, each in its matchmaking order."""
        site = asks[0].site
        mode, max_cpus, _ = asks[0].control
        in_use = 0
        if max_cpus is not None:
            await con.execute(Q["site_claims_lock"], site)
            in_use = await con.fetchval(Q["site_cpus_in_use"], site)
        if site_control.claim_room(mode, max_cpus, in_use) == 0:
            return [[] for _ in asks]
        queues = await self._candidates(con, asks)
        owner_of = {c.job_id: owner for owner, queue in queues.items() for c in queue}
        cpus_of = {c.job_id: c.cpus for queue in queues.values() for c in queue}
        in_use_of = {r[0]: int(r[1]) for r in await con.fetch(Q["busy_cores"])} if len(queues) > 1 else {}
        pool = candidates.pool_of(queues)
        taken: set[int] = set()
        out: list[list[int]] = []
        for ask in asks:
            room = site_control.claim_room(mode, max_cpus, in_use)
            ids = await self._choose(con, ask, pool, taken, in_use_of) if room != 0 else []
            ids = within_room([(job_id, cpus_of[job_id]) for job_id in ids], room)
            for job_id in ids:
                taken.add(job_id)
                in_use += cpus_of[job_id]
                in_use_of[owner_of[job_id]] = in_use_of.get(owner_of[job_id], 0) + cpus_of[job_id]
            out.append(ids)
        return out

    async def _candidates(self, con: Connection, asks: list[Ask]) -> dict[str, list[Candidate]]:
        """Each user's candidates for ``asks`` (id, cpus, memory, GPUs, disk, walltime), in claim order,
        locked: for pilots of a site that stages, those staged there; otherwise each user's best
        few of each shape that fits the largest of them (one index seek per user and shape)."""
        site = asks[0].site
        caps = [a.cap for a in asks]
        largest = Capacity(*(max(column) for column in zip(*caps, strict=True)))
        lifetime = max(int(a.req.lifetime_s) for a in asks)
        args = (largest.cpus, largest.memory_mb, largest.gpus, largest.disk_mb, lifetime, f",{site},")
        pool: dict[str, list[Candidate]] = {}
        if asks[0].staged:  # a job staged at one site runs there only
            for owner, *row in await con.fetch(Q["idle_candidates_staged"], *args, scan_for(asks), site):
                pool.setdefault(owner, []).append(Candidate(*row))
            return pool
        rows: dict[str, list[Any]] = {}
        for owner, *row in await con.fetch(Q["idle_candidates"].replace("{limit}", shape_limit(asks)), *args):
            rows.setdefault(owner, []).append(row)
        return {owner: [Candidate(*r) for r in candidates.best(mine, len(mine))] for owner, mine in rows.items()}

    async def _choose(
        self,
        con: Connection,
        ask: Ask,
        pool: candidates.Pool,
        taken: set[int],
        in_use_of: dict[str, int],
    ) -> list[int]:
        """Matchmaking for one pilot, from what the pool still holds that fits it."""
        req, cap, now = ask.req, ask.cap, ask.now
        queues = candidates.offer(pool, taken, cap, req.lifetime_s, ask.cap.cpus + req.want)
        if not queues:
            return []
        f = req.free
        ratio = await self._ratio(con, now) if retiring(req.lifetime_s) else 1.0
        # (a job staged at one site only: no reservation, the held job may never be staged here)
        reserve = (
            None if ask.staged else await self._reserve(con, ask.pilot_id, ask.site, ask.total, req.lifetime_s, now)
        )
        return select(
            fair_order(queues, in_use_of, self.shares),
            Capacity(f.cpus, f.memory_mb, f.gpus, f.disk_mb),
            ask.total,
            req.lifetime_s,
            req.want,
            reserve=reserve,
            runtime_ratio=ratio,
        )

    async def _ratio(self, con: Connection, now: float) -> float:
        """What jobs use of their walltime, from the latest successful attempts (re-read every few minutes)."""
        until, ratio = self._runtime_ratio
        if now >= until:
            ratio = runtime_ratio([(r[0], r[1]) for r in await con.fetch(Q["recent_runtimes"], SAMPLES)])
            self._runtime_ratio = (now + RATIO_TTL_S, ratio)
        return ratio
