"""Pilots in the SQLite store: start, heartbeat (sync) and the claim, each one transaction."""

from __future__ import annotations

import json
import secrets
import sqlite3

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
from glidein_server.policy.endoflife import SAMPLES, runtime_ratio
from glidein_server.policy.fairshare import fair_order
from glidein_server.policy.lifecycle import pilot_start_failed, site_health_blend
from glidein_server.policy.matchmaking import Candidate, Capacity, leaves, retiring, select
from glidein_server.policy.site_control import within_room
from glidein_server.store import candidates
from glidein_server.store.sqlite_attempts import SqliteAttempts
from glidein_server.store.sqlite_base import Q
from glidein_server.store.sqlite_reservations import SqliteReservations
from glidein_server.store.sqlite_sites import spec_decoder

TERMINAL_BATCH_STATES = {"done", "failed", "timeout", "cancelled"}
#: At most this many idle candidates are read per claim (best first); matchmaking picks among them.
CLAIM_SCAN = 2000
NOTHING_FREE = Resources(cpus=0, memory_mb=0)
RATIO_TTL_S = 300.0  # how long the learnt runtime ratio is used before it is read again
#: Why a retiring pilot that holds no job is told to leave (jobs wait, but none fits its last hours).
RETIRE_REASON = "its remaining lifetime is shorter than the walltime of every idle job it could run"


class SqlitePilots(SqliteReservations, SqliteAttempts):
    async def new_pilot(self, site: str, now: float) -> int:
        def tx(db: sqlite3.Connection) -> int:
            return int(db.execute(Q["pilot_insert"], (site, now)).lastrowid or 0)

        return await self._tx(tx)

    async def pilot_states(self, site: str, states: dict[int, str], now: float, failure: str | None = None) -> int:
        """Apply the batch system's view; pilots it reports as ended release their jobs at once."""

        def tx(db: sqlite3.Connection) -> int:
            if failure:
                db.execute(Q["site_failure_set"], (site, failure[:1000]))
            ended = 0
            for pid, state in states.items():
                if state not in TERMINAL_BATCH_STATES:
                    continue
                row = db.execute(Q["pilot_state_at_site"], (pid, site)).fetchone()
                if row is None or row[0] == "ended":
                    continue
                if pilot_start_failed(row[0]):
                    db.execute(Q["site_start_failed"], (site, now))
                self._end_pilot(db, pid, f"the batch system reports the pilot {state}", now)
                ended += 1
            return ended

        return await self._tx(tx)

    async def register_pilot(self, pilot_id: int, req: PilotRegister, now: float) -> None:
        r = req.resources
        state = "running" if req.selftest_ok else "ended"
        reason = None if req.selftest_ok else f"self-test failed: {req.selftest_reason}"
        args = (
            *(state, req.batch_id, req.host, r.cpus, r.memory_mb, r.gpus, r.disk_mb, req.end_time),
            *(r.cpus, r.memory_mb, r.gpus, r.disk_mb, max(0.0, req.end_time - now), now, now, reason),
            *(state, now, pilot_id),
        )

        def tx(db: sqlite3.Connection) -> None:
            row = db.execute(Q["pilot_state"], (pilot_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"Pilot {pilot_id} is not known.")
            if row[0] == "ended":
                raise ConflictError(f"Pilot {pilot_id} has already ended; a pilot token serves one pilot.")
            db.execute(Q["pilot_register"], args)
            if req.selftest_ok:
                db.execute(Q["site_start_ok"], (pilot_id,))
            else:
                site = db.execute(Q["pilot_site"], (pilot_id,)).fetchone()[0]
                db.execute(Q["site_start_failed"], (site, now))

        await self._tx(tx)

    async def sync(self, pilot_id: int, req: SyncRequest, now: float, lease_s: float) -> SyncResponse:
        return await self._quick_tx(self._sync, pilot_id, req, now, lease_s)

    def _sync(
        self, db: sqlite3.Connection, pilot_id: int, req: SyncRequest, now: float, lease_s: float
    ) -> SyncResponse:
        f = NOTHING_FREE if req.draining else req.free  # a stopping pilot's free cores serve no one
        lifetime_s = 0.0 if req.draining else req.lifetime_s
        update = (f.cpus, f.memory_mb, f.gpus, f.disk_mb, lifetime_s, now, req.occupancy, pilot_id)
        # A sync that starts and ends no attempt reads and writes its pilot in one statement.
        quick = not req.started and not req.finished
        prow = db.execute(*((Q["pilot_update_shape"], update) if quick else (Q["pilot_shape"], (pilot_id,)))).fetchone()
        if prow is None or prow[0] != "running":
            raise ConflictError(
                f"Pilot {pilot_id} is not running on the server (it ended or never registered).",
                hint="The pilot should stop; its jobs have been requeued.",
            )
        _, site, tcpus, tmem, tgpus, tdisk = prow
        refused = self._starts(db, pilot_id, req, now)
        ran = 0
        health: list[float] = []  # this pilot's outcomes, applied to its site's health at once
        for fin in req.finished:
            reason = self._finish(db, pilot_id, fin, now, health)
            if reason:
                refused.append(Refusal(attempt_id=fin.attempt_id, reason=reason))
            else:
                ran += 1
        if req.held is not None:
            self._drop_lost_claims(db, pilot_id, set(req.held), req.seq, now)
        if not quick:
            db.execute(Q["pilot_update"], update)
        if ran:
            db.execute(Q["pilot_jobs_run"], (ran, pilot_id))
        if health:
            db.execute(Q["site_health_apply"], (*site_health_blend(health), site))
        # Renew only leases a quarter spent: the others stay well ahead of the next heartbeat,
        # and a pilot holding hundreds of short jobs does not rewrite them all on every sync.
        db.execute(Q["pilot_leases"], (now + lease_s, pilot_id, now + 0.75 * lease_s))
        cancel = [r[0] for r in db.execute(Q["pilot_cancels"], (pilot_id,))]
        jobs: list[ClaimedJob] = []
        if req.claim and not req.draining and (f.cpus > 0 or req.want > 0):
            jobs = self._claim(db, pilot_id, site, req, Capacity(tcpus, tmem, tgpus, tdisk), now, lease_s)
        leave = None
        if self._site_control(db, site)[0] is SiteMode.DRAINING:
            leave = "its site is draining (the operator's `glidein-server site drain`)"
        elif req.claim and not req.draining and f.cpus > 0 and leaves(lifetime_s, len(jobs)):
            if db.execute(Q["idle_too_long"], (int(lifetime_s), f",{site},")).fetchone() is not None:
                leave = RETIRE_REASON
        return SyncResponse(jobs=jobs, cancel=cancel, refused=refused, leave=leave)

    def _ratio(self, db: sqlite3.Connection, now: float) -> float:
        """What jobs use of their walltime, from the latest successful attempts (re-read every few minutes)."""
        until, ratio = self._runtime_ratio
        if now >= until:
            ratio = runtime_ratio(db.execute(Q["recent_runtimes"], (SAMPLES,)).fetchall())
            self._runtime_ratio = (now + RATIO_TTL_S, ratio)
        return ratio

    @staticmethod
    def _starts(db: sqlite3.Connection, pilot_id: int, req: SyncRequest, now: float) -> list[Refusal]:
        """Mark attempts the pilot started as running; the refusals of stale ones."""
        refused: list[Refusal] = []
        finished_ids = {f.attempt_id for f in req.finished}
        for ref in req.started:
            if ref.attempt_id in finished_ids:
                continue
            row = db.execute(Q["attempt_start"], (now, ref.attempt_id, ref.lease, pilot_id)).fetchone()
            if row is None:
                refused.append(Refusal(attempt_id=ref.attempt_id, reason="stale or unknown lease"))
            else:
                db.execute(Q["job_running"], (row[0],))
        return refused

    async def claim_more(
        self, pilot_id: int, want: int, now: float, lease_s: float, *, seq: int | None = None
    ) -> SyncResponse:
        return await self._quick_tx(self._claim_more, pilot_id, want, now, lease_s, seq)

    def _claim_more(
        self, db: sqlite3.Connection, pilot_id: int, want: int, now: float, lease_s: float, seq: int | None
    ) -> SyncResponse:
        """Claim for a waiting long poll from what the pilot reported last: a report sent while the
        poll waited may have used slots, or said the pilot is stopping (no lifetime left)."""
        row = db.execute(Q["pilot_capacity"], (pilot_id,)).fetchone()
        if row is None:
            return SyncResponse()
        site, tcpus, tmem, tgpus, tdisk, fcpus, fmem, fgpus, fdisk, lifetime_s, last_seen = row
        lifetime_s -= now - (last_seen or now)
        cancel = [r[0] for r in db.execute(Q["pilot_cancels"], (pilot_id,))]
        if lifetime_s < 1 or (fcpus <= 0 and want <= 0):
            return SyncResponse(cancel=cancel)
        req = SyncRequest(
            free=Resources(cpus=fcpus, memory_mb=fmem, gpus=fgpus, disk_mb=fdisk),
            lifetime_s=lifetime_s,
            want=want,
            seq=seq,
        )
        jobs = self._claim(db, pilot_id, site, req, Capacity(tcpus, tmem, tgpus, tdisk), now, lease_s)
        return SyncResponse(jobs=jobs, cancel=cancel)

    @staticmethod
    def _candidates(
        db: sqlite3.Connection,
        site: str,
        fits: tuple[int, int, int, int, int, str],
        shapes: list[candidates.Shape] | None,
        per_user: int,
        free: tuple[int, int, int, int, int] | None,
    ) -> dict[str, list[Candidate]]:
        """Each user's candidates, best first: only jobs staged at the site if it stages inputs out of
        the job (``shapes`` None), else each user's best few of every fitting shape, however many
        jobs one user queued; with ``free`` (cpus, memory, GPUs, disk, backlog wanted), no more of a
        shape than can be taken (:func:`candidates.per_shape`)."""
        queues: dict[str, list[Candidate]] = {}
        if shapes is None:
            for owner, *row in db.execute(Q["idle_candidates_staged"], (site, *fits, CLAIM_SCAN)):
                queues.setdefault(owner, []).append(Candidate(*row))
            return queues
        limits = [per_user if free is None else candidates.per_shape(shape, *free, per_user) for shape in shapes]
        for (owner,) in db.execute(Q["idle_owners"]).fetchall() if shapes else ():
            rows = [
                row
                for shape, limit in zip(shapes, limits, strict=True)
                if limit > 0
                for row in db.execute(Q["idle_candidates_of_shape"], (owner, *shape, limit))
            ]
            if rows:
                queues[owner] = [Candidate(*r) for r in candidates.best(rows, per_user)]
        return queues

    def _claim(
        self,
        db: sqlite3.Connection,
        pilot_id: int,
        site: str,
        req: SyncRequest,
        total: Capacity,
        now: float,
        lease_s: float,
    ) -> list[ClaimedJob]:
        room = self._claim_room(db, site)  # the operator's drain, pause or cap
        if room == 0:
            return []
        f = req.free
        # Candidates individually fit the larger of free-now and (for the backlog) the whole pilot.
        cap = total if req.want > 0 else Capacity(f.cpus, f.memory_mb, f.gpus, f.disk_mb)
        fits = (cap.cpus, cap.memory_mb, cap.gpus, cap.disk_mb, int(req.lifetime_s), f",{site},")
        staged = self._site_stages(db, site)
        per_user = min(CLAIM_SCAN, 2 * (cap.cpus + req.want) + 8)
        shapes = None if staged else candidates.fitting(db.execute(Q["idle_shapes"]), *fits[:4], req.lifetime_s, site)
        can_take = (f.cpus, f.memory_mb, f.gpus, f.disk_mb, req.want)
        queues = self._candidates(db, site, fits, shapes, per_user, can_take)
        if not queues:
            return []
        in_use: dict[str, int] = dict(db.execute(Q["busy_cores"]).fetchall()) if len(queues) > 1 else {}
        free = Capacity(f.cpus, f.memory_mb, f.gpus, f.disk_mb)
        ratio = self._ratio(db, now) if retiring(req.lifetime_s) else 1.0
        # (a job staged at one site only: no reservation, the held job may never be staged here)
        reserve = None if staged else self._reserve(db, pilot_id, site, total, req.lifetime_s, now)
        if reserve is not None:  # cores held back for it: each user's best few of every shape, as many as may serve
            queues = self._candidates(db, site, fits, shapes, per_user, None)
        chosen = select(
            fair_order(queues, in_use, self.shares),
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
        specs = dict(db.execute(Q["claim_jobs"], (site, json.dumps(chosen))).fetchall())
        out: list[ClaimedJob] = []
        expires = now + lease_s
        for job_id in chosen:  # keep the matchmaking order
            spec = specs.get(job_id)
            if spec is None:
                continue
            lease = secrets.token_hex(16)
            row = (job_id, pilot_id, site, lease, now, expires, req.seq)
            attempt_id = db.execute(Q["attempt_insert"], row).fetchone()[0]
            out.append(ClaimedJob(attempt_id=attempt_id, job_id=job_id, lease=lease, spec=spec_decoder.decode(spec)))
        return out
