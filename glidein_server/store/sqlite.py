"""SQLite implementation of the Store: the embedded default (plumbing in sqlite_base, tokens in
sqlite_tokens): jobs, files, sites and demand, pilots and their attempts, staging."""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from glidein_client.wire.errors import ConflictError, NotFoundError, ValidationError
from glidein_client.wire.schema import (
    AttemptView,
    ClaimedJob,
    Demand,
    Finish,
    JobSpec,
    JobState,
    JobView,
    Outcome,
    OutputFile,
    PilotRegister,
    PilotShape,
    Refusal,
    Resources,
    Role,
    SiteView,
    Summary,
    SyncRequest,
    SyncResponse,
)
from glidein_client.wire.staging import Network, StagingJob, StagingView
from glidein_server.policy import demand as dm
from glidein_server.policy.matchmaking import Candidate, Capacity, select
from glidein_server.policy.retry import RetryPolicy, next_spec
from glidein_server.store.base import JobFilter, Principal
from glidein_server.store.sqlite_base import Q
from glidein_server.store.sqlite_tokens import SqliteTokens

log = logging.getLogger(__name__)
_spec_decoder = msgspec.json.Decoder(JobSpec)
_spec_encoder = msgspec.json.Encoder()
TERMINAL_BATCH_STATES = {"done", "failed", "timeout", "cancelled"}
CLAIM_SCAN = 2000
#: How attempts move a site's health (a moving average): success 1, failure 0. Jobs interrupted
#: by a pilot's end or cancelled say nothing about the site; a lost pilot does.
SITE_HEALTH = {Outcome.DONE: 1.0, Outcome.FAILED: 0.0, Outcome.MEMORY: 0.0, Outcome.WALLTIME: 0.0, Outcome.LOST: 0.0}
HEALTH_ALPHA = 0.05
NOTHING_FREE = Resources(cpus=0, memory_mb=0)


def sites_key(sites: Sequence[str] | None) -> str:
    return "" if not sites else "," + ",".join(sorted(set(sites))) + ","


def sites_from_key(key: str) -> frozenset[str] | None:
    return None if not key else frozenset(s for s in key.split(",") if s)


class SqliteStore(SqliteTokens):
    def __init__(self, path: str, *, retry: RetryPolicy | None = None) -> None:
        super().__init__(path)
        self.retry = retry or RetryPolicy()
        self._site_shapes: dict[str, PilotShape] = {}

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.executescript(Q["schema"])
        self._migrate_tokens(db)
        db.executescript(Q["staging_schema"])
        for name, shape in db.execute("SELECT name, shape FROM sites WHERE shape IS NOT NULL"):
            self._site_shapes[name] = msgspec.json.decode(shape, type=PilotShape)

    async def recover(self, now: float, grace_s: float) -> None:
        """After a restart: give pilots ``grace_s`` to reconnect before their jobs count as lost."""

        def tx(db: sqlite3.Connection) -> None:
            db.execute(Q["recover_leases"], (now + grace_s,))
            db.execute(Q["recover_pilots"], (now,))

        await self._tx(tx)

    # --- jobs -------------------------------------------------------------------------------

    async def add_jobs(self, owner: str, specs: Sequence[JobSpec], now: float) -> list[int]:
        rows = [
            (
                owner,
                _spec_encoder.encode(s),
                s.cpus,
                s.memory_mb,
                s.gpus,
                s.disk_mb,
                s.walltime_s,
                sites_key(s.sites),
                s.priority,
                s.max_retries,
                now,
            )
            for s in specs
        ]

        def tx(db: sqlite3.Connection) -> list[int]:
            before = db.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]
            db.executemany(Q["job_insert"], rows)
            return [r[0] for r in db.execute("SELECT id FROM jobs WHERE id > ? ORDER BY id", (before,))]

        return await self._tx(tx)

    def _job_view(self, db: sqlite3.Connection, row: Sequence[Any]) -> JobView:
        (jid, owner, state, spec_b, retries, attempts, submitted, finished, exit_code, reason, site, result_attempt) = (
            row
        )
        spec = _spec_decoder.decode(spec_b)
        outputs: list[OutputFile] = []
        if result_attempt is not None:
            outputs = [
                OutputFile(name=n, sha256=h, size=sz)
                for n, h, sz in db.execute(Q["outputs_of_attempt"], (result_attempt,))
            ]
        note = None
        if state == JobState.IDLE.value:
            note = dm.unrunnable_note(
                spec.cpus,
                spec.memory_mb,
                spec.gpus,
                spec.disk_mb,
                spec.walltime_s,
                frozenset(spec.sites) if spec.sites else None,
                self._site_shapes,
            )
        return JobView(
            id=jid,
            owner=owner,
            state=JobState(state),
            spec=spec,
            retries_used=retries,
            attempts=attempts,
            submitted_at=submitted,
            finished_at=finished,
            exit_code=exit_code,
            reason=reason,
            site=site,
            outputs=outputs,
            note=note,
        )

    async def list_jobs(self, flt: JobFilter) -> tuple[list[JobView], dict[str, int]]:
        where, args = [], []
        if flt.owner is not None:
            where.append("j.owner = ?")
            args.append(flt.owner)
        if flt.label is not None:
            where.append("json_extract(j.spec, '$.labels.' || json_quote(?)) = ?")
            args.extend(flt.label)
        if flt.ids is not None:
            where.append("j.id IN (SELECT value FROM json_each(?))")
            args.append(json.dumps(list(flt.ids)))
        base = " AND ".join(where) or "1"
        state_clause = " AND j.state = ?" if flt.state else ""
        state_args = [flt.state] if flt.state else []

        def read(db: sqlite3.Connection) -> tuple[list[JobView], dict[str, int]]:
            rows = db.execute(
                f"SELECT {Q['job_columns']} FROM jobs j WHERE {base}{state_clause} ORDER BY j.id LIMIT ? OFFSET ?",
                [*args, *state_args, flt.limit, flt.offset],
            ).fetchall()
            counts = dict(
                db.execute(f"SELECT j.state, count(*) FROM jobs j WHERE {base} GROUP BY j.state", args).fetchall()
            )
            return [self._job_view(db, r) for r in rows], counts

        return await self._run(read, self._conn)

    async def get_job(self, job_id: int) -> JobView | None:
        def read(db: sqlite3.Connection) -> JobView | None:
            row = db.execute(f"SELECT {Q['job_columns']} FROM jobs j WHERE j.id = ?", (job_id,)).fetchone()
            return None if row is None else self._job_view(db, row)

        return await self._run(read, self._conn)

    async def cancel_job(self, job_id: int, now: float) -> JobView:
        def tx(db: sqlite3.Connection) -> JobView:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"Job {job_id} does not exist.")
            if not JobState(row[0]).final:
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished_at = ?, reason = ? WHERE id = ?",
                    (now, "cancelled by request", job_id),
                )
            return self._job_view(
                db, db.execute(f"SELECT {Q['job_columns']} FROM jobs j WHERE j.id = ?", (job_id,)).fetchone()
            )

        return await self._tx(tx)

    async def retry_job(self, job_id: int) -> JobView:
        def tx(db: sqlite3.Connection) -> JobView:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"Job {job_id} does not exist.")
            if row[0] not in (JobState.FAILED.value, JobState.CANCELLED.value):
                raise ConflictError(f"Job {job_id} is {row[0]}; only failed or cancelled jobs can be retried.")
            active = db.execute("SELECT 1 FROM attempts WHERE job_id = ? AND state != 'ended'", (job_id,)).fetchone()
            if active:
                raise ConflictError(f"Job {job_id} still has an attempt winding down; retry it in a minute.")
            db.execute(
                "UPDATE jobs SET state = 'idle', retries_used = 0, finished_at = NULL, exit_code = NULL, "
                "reason = 'retried by request' WHERE id = ?",
                (job_id,),
            )
            return self._job_view(
                db, db.execute(f"SELECT {Q['job_columns']} FROM jobs j WHERE j.id = ?", (job_id,)).fetchone()
            )

        return await self._tx(tx)

    async def attempts_of(self, job_id: int) -> list[AttemptView]:
        def read(db: sqlite3.Connection) -> list[AttemptView]:
            rows = db.execute(
                "SELECT id, pilot_id, site, outcome, exit_code, reason, claimed_at, started_at, finished_at, "
                "stdout_tail, stderr_tail FROM attempts WHERE job_id = ? ORDER BY id",
                (job_id,),
            ).fetchall()
            return [
                AttemptView(
                    id=r[0],
                    pilot_id=r[1],
                    site=r[2],
                    outcome=r[3],
                    exit_code=r[4],
                    reason=r[5],
                    claimed_at=r[6],
                    started_at=r[7],
                    finished_at=r[8],
                    stdout_tail=r[9],
                    stderr_tail=r[10],
                )
                for r in rows
            ]

        return await self._run(read, self._conn)

    async def job_output(self, job_id: int, name: str) -> OutputFile | None:
        def read(db: sqlite3.Connection) -> OutputFile | None:
            row = db.execute(
                "SELECT o.name, o.sha256, o.size FROM outputs o JOIN jobs j ON j.result_attempt = o.attempt_id "
                "WHERE j.id = ? AND o.name = ?",
                (job_id, name),
            ).fetchone()
            return None if row is None else OutputFile(name=row[0], sha256=row[1], size=row[2])

        return await self._run(read, self._conn)

    # --- files ------------------------------------------------------------------------------

    async def add_file_owner(self, sha256: str, owner: str, size: int) -> None:
        await self._tx(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO file_owners (sha256, owner, size) VALUES (?, ?, ?)", (sha256, owner, size)
            )
        )

    async def may_read_file(self, sha256: str, principal: Principal) -> bool:
        if principal.role is Role.SITE:  # inputs of jobs that may run at the site, for out-of-job staging
            return await self._run(self._site_may_read, self._conn, principal.subject, sha256)

        def read(db: sqlite3.Connection) -> bool:
            if principal.role is Role.OPERATOR:
                return True
            if principal.role is Role.USER:
                return (
                    db.execute(
                        "SELECT 1 FROM file_owners WHERE sha256 = ? AND owner = ? UNION ALL "
                        "SELECT 1 FROM outputs o JOIN jobs j ON j.id = o.job_id "
                        "WHERE o.sha256 = ? AND j.owner = ? LIMIT 1",
                        (sha256, principal.subject, sha256, principal.subject),
                    ).fetchone()
                    is not None
                )
            if principal.role is Role.PILOT:
                return (
                    db.execute(
                        "SELECT 1 FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.pilot_id = ? "
                        "AND a.state != 'ended' AND instr(j.spec, ?) > 0 LIMIT 1",
                        (int(principal.subject), sha256),
                    ).fetchone()
                    is not None
                )
            return False

        return await self._run(read, self._conn)

    # --- sites and demand -------------------------------------------------------------------

    async def report_site(self, site: str, shape: PilotShape, now: float) -> None:
        self._site_shapes[site] = shape
        await self._tx(
            lambda db: db.execute(
                "INSERT INTO sites (name, shape, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET shape = excluded.shape, last_seen = excluded.last_seen",
                (site, msgspec.json.encode(shape), now),
            )
        )

    async def site_shapes(self) -> dict[str, PilotShape]:
        return dict(self._site_shapes)

    async def site_demand(self, site: str, now: float, live_after: float) -> Demand:
        def read(db: sqlite3.Connection) -> Demand:
            shapes = [
                dm.Shape(c, m, g, d, w, sites_from_key(s), n) for c, m, g, d, w, s, n in db.execute(Q["idle_shapes"])
            ]
            free = [dm.FreeCapacity(*r) for r in db.execute(Q["live_pilots_free"], (site, live_after))]
            health = dict(db.execute("SELECT name, health FROM sites").fetchall())
            demand = dm.site_demand(site, shapes, self._site_shapes, free, health)
            failures, backoff = self._site_backoff(db, site, now)
            return msgspec.structs.replace(demand, start_failures=failures, backoff_s=backoff)

        return await self._run(read, self._conn)

    @staticmethod
    def _site_backoff(db: sqlite3.Connection, site: str, now: float) -> tuple[int, float]:
        row = db.execute("SELECT start_failures, last_failure_at FROM sites WHERE name = ?", (site,)).fetchone()
        if row is None or not row[0]:
            return 0, 0.0
        left = dm.start_backoff_s(row[0]) - (now - (row[1] or now))
        return row[0], round(max(0.0, left), 1)

    async def new_pilot(self, site: str, now: float) -> int:
        def tx(db: sqlite3.Connection) -> int:
            cur = db.execute("INSERT INTO pilots (site, state, created_at) VALUES (?, 'pending', ?)", (site, now))
            return int(cur.lastrowid or 0)

        return await self._tx(tx)

    async def pilot_states(self, site: str, states: dict[int, str], now: float) -> int:
        """Apply the batch system's view; pilots it reports as ended release their jobs at once."""

        def tx(db: sqlite3.Connection) -> int:
            ended = 0
            for pid, state in states.items():
                if state not in TERMINAL_BATCH_STATES:
                    continue
                row = db.execute("SELECT state FROM pilots WHERE id = ? AND site = ?", (pid, site)).fetchone()
                if row is None or row[0] == "ended":
                    continue
                if row[0] == "pending":  # it ended without ever reaching the server
                    db.execute(Q["site_start_failed"], (site, now))
                self._end_pilot(db, pid, f"the batch system reports the pilot {state}", now)
                ended += 1
            return ended

        return await self._tx(tx)

    def _end_pilot(self, db: sqlite3.Connection, pilot_id: int, reason: str, now: float) -> None:
        db.execute(
            "UPDATE pilots SET state = 'ended', ended_at = ?, exit_reason = coalesce(exit_reason, ?) WHERE id = ?",
            (now, reason, pilot_id),
        )
        for attempt_id, job_id in db.execute(Q["active_attempts_of_pilot"], (pilot_id,)).fetchall():
            self._end_attempt(db, attempt_id, job_id, Outcome.INTERRUPTED, None, f"its pilot ended: {reason}", now)

    # --- pilots -----------------------------------------------------------------------------

    async def register_pilot(self, pilot_id: int, req: PilotRegister, now: float) -> None:
        r = req.resources

        def tx(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT state FROM pilots WHERE id = ?", (pilot_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"Pilot {pilot_id} is not known.")
            if row[0] == "ended":
                raise ConflictError(f"Pilot {pilot_id} has already ended; a pilot token serves one pilot.")
            state = "running" if req.selftest_ok else "ended"
            db.execute(
                "UPDATE pilots SET state = ?, batch_id = ?, host = ?, cpus = ?, memory_mb = ?, gpus = ?, "
                "disk_mb = ?, end_time = ?, free_cpus = ?, free_memory_mb = ?, free_gpus = ?, free_disk_mb = ?, "
                "lifetime_s = ?, started_at = ?, last_seen = ?, exit_reason = ?, "
                "ended_at = CASE WHEN ? = 'ended' THEN ? END WHERE id = ?",
                (
                    state,
                    req.batch_id,
                    req.host,
                    r.cpus,
                    r.memory_mb,
                    r.gpus,
                    r.disk_mb,
                    req.end_time,
                    r.cpus,
                    r.memory_mb,
                    r.gpus,
                    r.disk_mb,
                    max(0.0, req.end_time - now),
                    now,
                    now,
                    None if req.selftest_ok else f"self-test failed: {req.selftest_reason}",
                    state,
                    now,
                    pilot_id,
                ),
            )
            if req.selftest_ok:
                db.execute(Q["site_start_ok"], (pilot_id,))
            else:
                site = db.execute("SELECT site FROM pilots WHERE id = ?", (pilot_id,)).fetchone()[0]
                db.execute(Q["site_start_failed"], (site, now))

        await self._tx(tx)

    async def sync(self, pilot_id: int, req: SyncRequest, now: float, lease_s: float) -> SyncResponse:
        return await self._tx(self._sync, pilot_id, req, now, lease_s)

    def _sync(
        self, db: sqlite3.Connection, pilot_id: int, req: SyncRequest, now: float, lease_s: float
    ) -> SyncResponse:
        prow = db.execute(
            "SELECT state, site, cpus, memory_mb, gpus, disk_mb FROM pilots WHERE id = ?", (pilot_id,)
        ).fetchone()
        if prow is None or prow[0] != "running":
            raise ConflictError(
                f"Pilot {pilot_id} is not running on the server (it ended or never registered).",
                hint="The pilot should stop; its jobs have been requeued.",
            )
        _, site, tcpus, tmem, tgpus, tdisk = prow
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
        ran = 0
        health: list[float] = []  # this pilot's outcomes, applied to its site's health at once
        for fin in req.finished:
            reason = self._finish(db, pilot_id, fin, now, health)
            if reason:
                refused.append(Refusal(attempt_id=fin.attempt_id, reason=reason))
            else:
                ran += 1
        if req.held is not None:
            self._drop_lost_claims(db, pilot_id, set(req.held), now)
        f = NOTHING_FREE if req.draining else req.free  # a stopping pilot's free cores serve no one
        db.execute(
            Q["pilot_update"],
            (
                f.cpus,
                f.memory_mb,
                f.gpus,
                f.disk_mb,
                0.0 if req.draining else req.lifetime_s,
                now,
                req.occupancy,
                pilot_id,
            ),
        )
        if ran:
            db.execute("UPDATE pilots SET jobs_run = jobs_run + ? WHERE id = ?", (ran, pilot_id))
        if health:
            keep, add = 1.0, 0.0
            for value in health:  # the same as one update per outcome, in order
                keep *= 1 - HEALTH_ALPHA
                add = add * (1 - HEALTH_ALPHA) + HEALTH_ALPHA * value
            db.execute("UPDATE sites SET health = health * ? + ? WHERE name = ?", (keep, add, site))
        # Renew only leases a quarter spent: the others stay well ahead of the next heartbeat,
        # and a pilot holding hundreds of short jobs does not rewrite them all on every sync.
        db.execute(Q["pilot_leases"], (now + lease_s, pilot_id, now + 0.75 * lease_s))
        cancel = [r[0] for r in db.execute(Q["pilot_cancels"], (pilot_id,))]
        jobs: list[ClaimedJob] = []
        if req.claim and not req.draining and (f.cpus > 0 or req.want > 0):
            jobs = self._claim(db, pilot_id, site, req, Capacity(tcpus, tmem, tgpus, tdisk), now, lease_s)
        return SyncResponse(jobs=jobs, cancel=cancel, refused=refused)

    async def claim_more(self, pilot_id: int, want: int, now: float, lease_s: float) -> SyncResponse:
        return await self._tx(self._claim_more, pilot_id, want, now, lease_s)

    def _claim_more(self, db: sqlite3.Connection, pilot_id: int, want: int, now: float, lease_s: float) -> SyncResponse:
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
            free=Resources(cpus=fcpus, memory_mb=fmem, gpus=fgpus, disk_mb=fdisk), lifetime_s=lifetime_s, want=want
        )
        jobs = self._claim(db, pilot_id, site, req, Capacity(tcpus, tmem, tgpus, tdisk), now, lease_s)
        return SyncResponse(jobs=jobs, cancel=cancel)

    def _drop_lost_claims(self, db: sqlite3.Connection, pilot_id: int, held: set[int], now: float) -> None:
        """Requeue claims the pilot does not hold: the answer that carried them never reached it."""
        for attempt_id, job_id in db.execute(Q["active_attempts_of_pilot"], (pilot_id,)).fetchall():
            if attempt_id not in held:
                self._end_attempt(
                    db,
                    attempt_id,
                    job_id,
                    Outcome.INTERRUPTED,
                    None,
                    "its claim never reached the pilot (the answer was lost on the way)",
                    now,
                )

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
        f = req.free
        # Candidates individually fit the larger of free-now and (for the backlog) the whole pilot.
        cap = total if req.want > 0 else Capacity(f.cpus, f.memory_mb, f.gpus, f.disk_mb)
        args = (cap.cpus, cap.memory_mb, cap.gpus, cap.disk_mb, int(req.lifetime_s), f",{site},", CLAIM_SCAN)
        if self._site_stages(db, site):  # its client stages inputs out of the job: only jobs staged there
            rows = db.execute(Q["idle_candidates_staged"], (site, *args)).fetchall()
        else:
            rows = db.execute(Q["idle_candidates"], args).fetchall()
        if not rows:
            return []
        chosen = select(
            (Candidate(*r) for r in rows),
            Capacity(f.cpus, f.memory_mb, f.gpus, f.disk_mb),
            total,
            req.lifetime_s,
            req.want,
        )
        if not chosen:
            return []
        claimed = db.execute(Q["claim_jobs"], (site, json.dumps(chosen))).fetchall()
        specs = dict(claimed)
        out: list[ClaimedJob] = []
        expires = now + lease_s
        for job_id in chosen:  # keep the matchmaking order
            spec = specs.get(job_id)
            if spec is None:
                continue
            lease = secrets.token_hex(16)
            attempt_id = db.execute(Q["attempt_insert"], (job_id, pilot_id, site, lease, now, expires)).fetchone()[0]
            out.append(ClaimedJob(attempt_id=attempt_id, job_id=job_id, lease=lease, spec=_spec_decoder.decode(spec)))
        return out

    def _finish(
        self, db: sqlite3.Connection, pilot_id: int, fin: Finish, now: float, health: list[float]
    ) -> str | None:
        row = db.execute(Q["attempt_active"], (fin.attempt_id, fin.lease, pilot_id)).fetchone()
        if row is None:
            return "stale or unknown lease: this attempt no longer owns the job"
        job_id = row[0]
        outcome = fin.outcome
        if outcome is Outcome.DONE and fin.outputs:
            have = {n: (h, s) for n, h, s in db.execute(Q["outputs_of_attempt"], (fin.attempt_id,))}
            missing = [o.name for o in fin.outputs if have.get(o.name) != (o.sha256, o.size)]
            if missing:
                outcome = Outcome.FAILED
                fin = msgspec.structs.replace(
                    fin, reason=f"outputs {', '.join(missing)} were reported but not uploaded intact"
                )
        self._end_attempt(db, fin.attempt_id, job_id, outcome, fin.exit_code, fin.reason, now, fin, health)
        return None

    def _end_attempt(
        self,
        db: sqlite3.Connection,
        attempt_id: int,
        job_id: int,
        outcome: Outcome,
        exit_code: int | None,
        reason: str | None,
        now: float,
        fin: Finish | None = None,
        health: list[float] | None = None,
    ) -> None:
        """End an attempt and move its job on; ``health`` collects the site-health outcome instead of
        applying it at once."""
        wall = fin.wall_s if fin else 0.0
        db.execute(
            Q["attempt_end"],
            (
                outcome.value,
                exit_code,
                reason,
                now,
                fin.wall_s if fin else None,
                fin.max_rss_mb if fin else None,
                fin.stdout_tail if fin else "",
                fin.stderr_tail if fin else "",
                wall,
                now - wall,
                attempt_id,
            ),
        )
        if outcome is Outcome.DONE:
            db.execute(Q["job_done"], (now, exit_code, attempt_id, job_id))
        elif outcome.counts_as_retry:
            row = db.execute("SELECT retries_used, max_retries, spec FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row and row[0] < row[1]:
                grown = next_spec(_spec_decoder.decode(row[2]), outcome, self.retry)
                if grown is None:
                    db.execute(Q["job_retry"], (exit_code, reason, job_id))
                else:
                    spec, note = grown
                    db.execute(
                        Q["job_retry_grown"],
                        (
                            exit_code,
                            f"{reason}; {note}",
                            spec.memory_mb,
                            spec.walltime_s,
                            _spec_encoder.encode(spec),
                            job_id,
                        ),
                    )
            else:
                db.execute(Q["job_failed"], (now, exit_code, reason, job_id))
        elif outcome is not Outcome.CANCELLED:
            db.execute(Q["job_requeue"], (reason, job_id))
        if outcome in SITE_HEALTH:
            if health is not None:
                health.append(SITE_HEALTH[outcome])
            else:
                db.execute(Q["site_health"], (1 - HEALTH_ALPHA, HEALTH_ALPHA * SITE_HEALTH[outcome], attempt_id))

    async def record_output(
        self, pilot_id: int, attempt_id: int, lease: str, name: str, sha256: str, size: int
    ) -> None:
        def tx(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT a.job_id, j.spec FROM attempts a JOIN jobs j ON j.id = a.job_id "
                "WHERE a.id = ? AND a.lease = ? AND a.pilot_id = ? AND a.state != 'ended'",
                (attempt_id, lease, pilot_id),
            ).fetchone()
            if row is None:
                raise ConflictError("This attempt no longer owns its job (stale lease); the output was not kept.")
            spec = _spec_decoder.decode(row[1])
            if name not in spec.outputs:
                raise ValidationError(f"{name!r} is not one of the job's declared outputs.", field="name")
            db.execute(Q["output_insert"], (attempt_id, row[0], name, sha256, size))

        await self._tx(tx)

    async def pilot_exit(self, pilot_id: int, reason: str, occupancy: float, jobs_run: int, now: float) -> None:
        def tx(db: sqlite3.Connection) -> None:
            db.execute("UPDATE pilots SET occupancy = ?, exit_reason = ? WHERE id = ?", (occupancy, reason, pilot_id))
            self._end_pilot(db, pilot_id, reason, now)

        await self._tx(tx)

    async def expire(self, now: float, pilot_timeout_s: float) -> int:
        """Requeue attempts whose lease ran out; end pilots that stopped reporting."""

        def tx(db: sqlite3.Connection) -> int:
            expired = db.execute(Q["expired_attempts"], (now,)).fetchall()
            for attempt_id, job_id in expired:
                self._end_attempt(
                    db, attempt_id, job_id, Outcome.LOST, None, "its pilot stopped reporting (lease expired)", now
                )
            for (pid,) in db.execute(
                "SELECT id FROM pilots WHERE state = 'running' AND last_seen < ?", (now - pilot_timeout_s,)
            ).fetchall():
                self._end_pilot(db, pid, "lost: it stopped reporting", now)
            return len(expired)

        return await self._tx(tx)

    async def summary(self, owner: str | None) -> Summary:
        def read(db: sqlite3.Connection) -> Summary:
            if owner is None:
                jobs = dict(db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
            else:
                jobs = dict(
                    db.execute("SELECT state, count(*) FROM jobs WHERE owner = ? GROUP BY state", (owner,)).fetchall()
                )
            pilots = dict(db.execute("SELECT state, count(*) FROM pilots GROUP BY state").fetchall())
            occ = db.execute(
                "SELECT sum(occupancy * cpus * (ended_at - started_at)), sum(cpus * (ended_at - started_at)) "
                "FROM pilots WHERE state = 'ended' AND occupancy IS NOT NULL AND started_at IS NOT NULL"
            ).fetchone()
            sites = []
            now = time.time()
            for name, shape, seen in db.execute("SELECT name, shape, last_seen FROM sites ORDER BY name").fetchall():
                failures, backoff = self._site_backoff(db, name, now)
                counts = dict(
                    db.execute(
                        "SELECT state, count(*) FROM pilots WHERE site = ? AND state != 'ended' GROUP BY state", (name,)
                    ).fetchall()
                )
                sites.append(
                    SiteView(
                        name=name,
                        shape=msgspec.json.decode(shape, type=PilotShape) if shape else None,
                        pilots_running=counts.get("running", 0),
                        pilots_pending=counts.get("pending", 0),
                        last_seen=seen,
                        start_failures=failures,
                        backoff_s=backoff,
                    )
                )
            occupancy = occ[0] / occ[1] if occ and occ[1] else None
            problems = [
                f"pilot {pid} at site {site} on {host or 'an unknown host'}: {reason}"
                for pid, site, host, reason in db.execute(
                    "SELECT id, site, host, exit_reason FROM pilots WHERE ended_at > ? AND "
                    "(exit_reason LIKE 'black hole%' OR exit_reason LIKE 'self-test failed%') "
                    "ORDER BY id DESC LIMIT 50",
                    (now - 86400,),
                )
            ]
            return Summary(jobs=jobs, pilots=pilots, sites=sites, occupancy=occupancy, problems=problems)

        return await self._run(read, self._conn)

    # --- firewalled sites: out-of-job staging ----------------------------------------------------

    async def set_site_network(self, site: str, network: Network, now: float) -> bool:
        """Record how the site's pilots reach the server; True when that changed."""

        def tx(db: sqlite3.Connection) -> bool:
            row = db.execute(Q["site_network_get"], (site,)).fetchone()
            db.execute(Q["site_network_set"], (site, network.value, now))
            return row is None or row[0] != network.value

        return await self._tx(tx)

    @staticmethod
    def _site_stages(db: sqlite3.Connection, site: str) -> bool:
        row = db.execute(Q["site_network_get"], (site,)).fetchone()
        return row is not None and Network(row[0]).stages

    @staticmethod
    def _site_may_read(db: sqlite3.Connection, site: str, sha256: str) -> bool:
        """A site reads the inputs of jobs that may run there and are not finished."""
        return db.execute(Q["site_may_read_file"], (f",{site},", sha256, sha256)).fetchone() is not None

    async def staging_view(self, site: str, limit: int) -> StagingView:
        shape = self._site_shapes.get(site)
        fit = (
            (shape.cpus, shape.memory_mb, shape.gpus, shape.disk_mb, shape.walltime_s)
            if shape is not None
            else (1 << 62,) * 5
        )

        def job(row: Sequence[Any]) -> StagingJob:
            spec = _spec_decoder.decode(row[3])
            return StagingJob(job_id=row[0], state=JobState(row[1]), site=row[2], cpus=spec.cpus, inputs=spec.inputs)

        def read(db: sqlite3.Connection) -> StagingView:
            staged = [job(r) for r in db.execute(Q["staging_staged"], (site,))]
            eligible = [job(r) for r in db.execute(Q["staging_eligible"], (f",{site},", *fit, site, limit))]
            return StagingView(staged=staged, eligible=eligible)

        return await self._run(read, self._conn)

    async def report_staging(
        self, site: str, staged: Sequence[int], released: Sequence[int], now: float
    ) -> tuple[int, int]:
        def tx(db: sqlite3.Connection) -> tuple[int, int]:
            added = sum(db.execute(Q["staged_insert"], (site, now, job_id, f",{site},")).rowcount for job_id in staged)
            dropped = sum(db.execute(Q["staged_delete"], (site, job_id)).rowcount for job_id in released)
            return added, dropped

        return await self._tx(tx)
