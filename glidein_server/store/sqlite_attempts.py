"""Attempts ending in the SQLite store: the plan of policy.lifecycle applied to the job and its site.

The store decides nothing here: it reads what ``plan_attempt_end`` needs, calls it, and writes
the plan. Pilots ending (by report, by the batch system, or by silence) end their attempts the same way.
"""

from __future__ import annotations

import json
import sqlite3

from glidein_client.wire.errors import ConflictError, ValidationError
from glidein_client.wire.schema import Finish, Outcome
from glidein_server.policy.lifecycle import (
    HEALTH_ALPHA,
    JobPlan,
    RetryBudget,
    Step,
    asked_of,
    check_outputs,
    claim_lost,
    needs_budget,
    plan_attempt_end,
    site_health_value,
)
from glidein_server.store.history import events_by_job, grown_row
from glidein_server.store.sqlite_base import Q
from glidein_server.store.sqlite_jobs import SqliteJobs, spec_encoder
from glidein_server.store.sqlite_sites import spec_decoder
from glidein_server.store.sqlite_usage import provenance_columns


class SqliteAttempts(SqliteJobs):
    def _budget(self, db: sqlite3.Connection, job_id: int) -> RetryBudget | None:
        row = db.execute(Q["job_retry_budget"], (job_id,)).fetchone()
        if row is None:
            return None
        events = events_by_job(db.execute(Q["job_events_of"], (json.dumps([job_id]),))).get(job_id, [])
        return RetryBudget(row[0], row[1], spec_decoder.decode(row[2]), asked_of(events))

    @staticmethod
    def _apply(
        db: sqlite3.Connection, job_id: int, attempt_id: int, plan: JobPlan, exit_code: int | None, now: float
    ) -> None:
        if plan.step is Step.DONE:
            db.execute(Q["job_done"], (now, exit_code, attempt_id, job_id))
        elif plan.step is Step.RETRY and plan.grown is not None:
            g = plan.grown
            db.execute(
                Q["job_retry_grown"],
                (exit_code, plan.reason, g.memory_mb, g.walltime_s, spec_encoder.encode(g), job_id),
            )
            db.execute(Q["job_event_insert"], grown_row(job_id, plan, now))
        elif plan.step is Step.RETRY:
            db.execute(Q["job_retry"], (exit_code, plan.reason, job_id))
        elif plan.step is Step.FAIL:
            db.execute(Q["job_failed"], (now, exit_code, plan.reason, attempt_id, job_id))
        elif plan.step is Step.REQUEUE:
            db.execute(Q["job_requeue"], (plan.reason, job_id))

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
                *provenance_columns(fin),
                wall,
                now - wall,
                attempt_id,
            ),
        )
        budget = self._budget(db, job_id) if needs_budget(outcome) else None
        self._apply(
            db,
            job_id,
            attempt_id,
            plan_attempt_end(outcome, reason, budget, self.retry, peak_mb=fin.max_rss_mb if fin else 0.0),
            exit_code,
            now,
        )
        value = site_health_value(outcome)
        if value is not None:
            if health is not None:
                health.append(value)
            else:
                db.execute(Q["site_health"], (1 - HEALTH_ALPHA, HEALTH_ALPHA * value, attempt_id))

    def _finish(
        self, db: sqlite3.Connection, pilot_id: int, fin: Finish, now: float, health: list[float]
    ) -> str | None:
        """Apply a pilot's report of an ended attempt; the reason it was refused, or None."""
        row = db.execute(Q["attempt_active"], (fin.attempt_id, fin.lease, pilot_id)).fetchone()
        if row is None:
            return "stale or unknown lease: this attempt no longer owns the job"
        uploaded: dict[str, tuple[str, int]] = {}
        if fin.outcome is Outcome.DONE and fin.outputs:
            uploaded = {n: (h, s) for n, h, s in db.execute(Q["outputs_of_attempt"], (fin.attempt_id,))}
        outcome, reason = check_outputs(fin, uploaded)
        self._end_attempt(db, fin.attempt_id, row[0], outcome, fin.exit_code, reason, now, fin, health)
        return None

    def _end_pilot(self, db: sqlite3.Connection, pilot_id: int, reason: str, now: float) -> None:
        db.execute(Q["pilot_end"], (now, reason, pilot_id))
        for attempt_id, job_id in db.execute(Q["active_attempts_of_pilot"], (pilot_id,)).fetchall():
            self._end_attempt(db, attempt_id, job_id, Outcome.INTERRUPTED, None, f"its pilot ended: {reason}", now)

    def _drop_lost_claims(
        self, db: sqlite3.Connection, pilot_id: int, held: set[int], seq: int | None, now: float
    ) -> None:
        """Requeue claims the pilot does not hold: the answer that carried them never reached it."""
        for attempt_id, job_id, claim_seq in db.execute(Q["active_claims_of_pilot"], (pilot_id,)).fetchall():
            if attempt_id not in held and claim_lost(claim_seq, seq):
                self._end_attempt(
                    db,
                    attempt_id,
                    job_id,
                    Outcome.INTERRUPTED,
                    None,
                    "its claim never reached the pilot (the answer was lost on the way)",
                    now,
                )

    async def record_output(
        self, pilot_id: int, attempt_id: int, lease: str, name: str, sha256: str, size: int
    ) -> None:
        def tx(db: sqlite3.Connection) -> None:
            row = db.execute(Q["attempt_output_owner"], (attempt_id, lease, pilot_id)).fetchone()
            if row is None:
                raise ConflictError("This attempt no longer owns its job (stale lease); the output was not kept.")
            if name not in spec_decoder.decode(row[1]).outputs:
                raise ValidationError(f"{name!r} is not one of the job's declared outputs.", field="name")
            db.execute(Q["output_insert"], (attempt_id, row[0], name, sha256, size))

        await self._tx(tx)

    async def pilot_exit(self, pilot_id: int, reason: str, occupancy: float, jobs_run: int, now: float) -> None:
        def tx(db: sqlite3.Connection) -> None:
            db.execute(Q["pilot_exit"], (occupancy, reason, pilot_id))
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
            for (pid,) in db.execute(Q["pilots_silent"], (now - pilot_timeout_s,)).fetchall():
                self._end_pilot(db, pid, "lost: it stopped reporting", now)
            return len(expired)

        return await self._tx(tx)
