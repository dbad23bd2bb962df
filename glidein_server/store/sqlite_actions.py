"""Hold, release and retry by request in the SQLite store: the lifecycle's rules, applied in one transaction."""

from __future__ import annotations

import sqlite3

from glidein_client.wire.errors import NotFoundError
from glidein_client.wire.schema import JobState, JobView, RetryRequest
from glidein_server.policy.lifecycle import check_release, check_retry, plan_hold, retried_spec
from glidein_server.store.base import JobAct
from glidein_server.store.history import event_row, job_reason
from glidein_server.store.sqlite_base import Q
from glidein_server.store.sqlite_jobs import SqliteJobs, spec_encoder
from glidein_server.store.sqlite_sites import sites_key, spec_decoder


class SqliteJobActions(SqliteJobs):
    @staticmethod
    def _state(db: sqlite3.Connection, job_id: int) -> tuple[JobState, bytes]:
        row = db.execute(Q["job_spec"], (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"Job {job_id} does not exist.")
        return JobState(row[0]), row[1]

    def _view(self, db: sqlite3.Connection, job_id: int) -> JobView:
        view = self._read_job(db, job_id)
        assert view is not None
        return view

    @staticmethod
    def _winding_down(db: sqlite3.Connection, job_id: int) -> bool:
        return db.execute(Q["job_has_active_attempt"], (job_id,)).fetchone() is not None

    async def hold_job(self, job_id: int, act: JobAct) -> JobView:
        def tx(db: sqlite3.Connection) -> JobView:
            state, _ = self._state(db, job_id)
            if plan_hold(job_id, state):
                db.execute(Q["job_hold"], (job_reason("held", act), job_id))
                db.execute(Q["job_event_insert"], event_row(job_id, act, "held"))
            return self._view(db, job_id)

        return await self._tx(tx)

    async def release_job(self, job_id: int, act: JobAct) -> JobView:
        def tx(db: sqlite3.Connection) -> JobView:
            state, _ = self._state(db, job_id)
            check_release(job_id, state, self._winding_down(db, job_id))
            db.execute(Q["job_release"], (job_reason("released", act), job_id))
            db.execute(Q["job_event_insert"], event_row(job_id, act, "released"))
            return self._view(db, job_id)

        return await self._tx(tx)

    async def retry_job(self, job_id: int, act: JobAct | None = None, req: RetryRequest | None = None) -> JobView:
        def tx(db: sqlite3.Connection) -> JobView:
            state, spec_b = self._state(db, job_id)
            check_retry(job_id, state, self._winding_down(db, job_id))
            spec, changes = retried_spec(spec_decoder.decode(spec_b), req or RetryRequest())
            reason = job_reason("retried", act) if act else "retried by request"
            db.execute(
                Q["job_retry_request"],
                (reason, spec_encoder.encode(spec), spec.cpus, spec.memory_mb, spec.gpus, spec.walltime_s)
                + (sites_key(spec.sites), job_id),
            )
            if act is not None:
                db.execute(Q["job_event_insert"], event_row(job_id, act, "retried", changes))
            return self._view(db, job_id)

        return await self._tx(tx)
