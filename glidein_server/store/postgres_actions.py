"""Hold, release and retry by request in the PostgreSQL store: the lifecycle's rules, applied in one
transaction with the job's row locked (replicas acting on one job at once take turns)."""

from __future__ import annotations

from glidein_client.wire.errors import NotFoundError
from glidein_client.wire.schema import JobState, JobView, RetryRequest
from glidein_server.policy.lifecycle import check_release, check_retry, plan_hold, retried_spec
from glidein_server.store.base import JobAct
from glidein_server.store.history import event_row, job_reason
from glidein_server.store.postgres_base import Connection, Q
from glidein_server.store.postgres_jobs import PostgresJobs, spec_decoder, spec_encoder
from glidein_server.store.sqlite_sites import sites_key


class PostgresJobActions(PostgresJobs):
    @staticmethod
    async def _locked(con: Connection, job_id: int) -> tuple[JobState, str]:
        row = await con.fetchrow(Q["job_spec_for_update"], job_id)
        if row is None:
            raise NotFoundError(f"Job {job_id} does not exist.")
        return JobState(row[0]), row[1]

    async def _view(self, con: Connection, job_id: int) -> JobView:
        view = await self._read_job(con, job_id)
        assert view is not None
        return view

    @staticmethod
    async def _winding_down(con: Connection, job_id: int) -> bool:
        return bool(await con.fetchval(Q["job_has_active_attempt"], job_id))

    async def hold_job(self, job_id: int, act: JobAct) -> JobView:
        async def tx(con: Connection) -> JobView:
            state, _ = await self._locked(con, job_id)
            if plan_hold(job_id, state):
                await con.execute(Q["job_hold"], job_id, job_reason("held", act))
                await con.execute(Q["job_event_insert"], *event_row(job_id, act, "held"))
            return await self._view(con, job_id)

        return await self._tx(tx)

    async def release_job(self, job_id: int, act: JobAct) -> JobView:
        async def tx(con: Connection) -> JobView:
            state, _ = await self._locked(con, job_id)
            check_release(job_id, state, await self._winding_down(con, job_id))
            await con.execute(Q["job_release"], job_id, job_reason("released", act))
            await con.execute(Q["job_event_insert"], *event_row(job_id, act, "released"))
            return await self._view(con, job_id)

        return await self._tx(tx)

    async def retry_job(self, job_id: int, act: JobAct | None = None, req: RetryRequest | None = None) -> JobView:
        async def tx(con: Connection) -> JobView:
            state, spec_t = await self._locked(con, job_id)
            check_retry(job_id, state, await self._winding_down(con, job_id))
            spec, changes = retried_spec(spec_decoder.decode(spec_t), req or RetryRequest())
            reason = job_reason("retried", act) if act else "retried by request"
            await con.execute(
                Q["job_retry_request"],
                *(job_id, reason, spec_encoder.encode(spec).decode()),
                *(spec.cpus, spec.memory_mb, spec.gpus, spec.walltime_s, sites_key(spec.sites)),
            )
            if act is not None:
                await con.execute(Q["job_event_insert"], *event_row(job_id, act, "retried", changes))
            return await self._view(con, job_id)

        return await self._tx(tx)
