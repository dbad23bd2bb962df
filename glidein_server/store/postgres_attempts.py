"""Attempts ending in the PostgreSQL store: the plan of policy.lifecycle applied to the job and its site."""

from __future__ import annotations

from collections import Counter

from glidein_client.wire.errors import ConflictError, ValidationError
from glidein_client.wire.schema import Finish, Outcome
from glidein_server.policy.lifecycle import (
    JobPlan,
    RetryBudget,
    Step,
    asked_of,
    check_outputs,
    claim_lost,
    needs_budget,
    plan_attempt_end,
    site_health_blend,
    site_health_value,
)
from glidein_server.store.history import events_by_job, grown_row
from glidein_server.store.postgres_base import Connection, Q
from glidein_server.store.postgres_jobs import spec_decoder, spec_encoder
from glidein_server.store.postgres_monitoring import PostgresMonitoring
from glidein_server.store.sqlite_usage import provenance_columns

STALE = "stale or unknown lease: this attempt no longer owns the job"


class PostgresAttempts(PostgresMonitoring):
    async def _budget(self, con: Connection, job_id: int) -> RetryBudget | None:
        row = await con.fetchrow(Q["job_retry_budget"], job_id)
        if row is None:
            return None
        events = events_by_job(tuple(r) for r in await con.fetch(Q["job_events_of"], [job_id])).get(job_id, [])
        return RetryBudget(row[0], row[1], spec_decoder.decode(row[2]), asked_of(events))

    @staticmethod
    async def _apply(
        con: Connection, job_id: int, attempt_id: int, plan: JobPlan, exit_code: int | None, now: float
    ) -> None:
        if plan.step is Step.DONE:
            await con.execute(Q["job_done"], now, exit_code, attempt_id, job_id)
        elif plan.step is Step.RETRY and plan.grown is not None:
            g = plan.grown
            spec = spec_encoder.encode(g).decode()
            await con.execute(Q["job_retry_grown"], exit_code, plan.reason, g.memory_mb, g.walltime_s, spec, job_id)
            await con.execute(Q["job_event_insert"], *grown_row(job_id, plan, now))
        elif plan.step is Step.RETRY:
            await con.execute(Q["job_retry"], exit_code, plan.reason, job_id)
        elif plan.step is Step.FAIL:
            await con.execute(Q["job_failed"], now, exit_code, plan.reason, attempt_id, job_id)
        elif plan.step is Step.REQUEUE:
            await con.execute(Q["job_requeue"], plan.reason, job_id)

    async def _end_attempt(
        self,
        con: Connection,
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
        site = await con.fetchval(
            Q["attempt_end"],
            outcome.value,
            exit_code,
            reason,
            now,
            fin.wall_s if fin else None,
            fin.max_rss_mb if fin else None,
            fin.stdout_tail if fin else "",
            fin.stderr_tail if fin else "",
            fin.wall_s if fin else 0.0,
            attempt_id,
            *provenance_columns(fin),
        )
        budget = await self._budget(con, job_id) if needs_budget(outcome) else None
        await self._apply(
            con,
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
                await con.execute(Q["site_health_apply"], *site_health_blend([value]), site)

    async def _finish_all(
        self, con: Connection, pilot_id: int, finished: list[Finish], now: float, health: list[float]
    ) -> list[tuple[int, str | None]]:
        """Apply a pilot's reports of ended attempts: (attempt, the reason it was refused or None), in
        attempt order. Plain DONE reports (no outputs to check) end in one statement together."""
        counts = Counter(f.attempt_id for f in finished)
        quick = sorted(
            (f for f in finished if f.outcome is Outcome.DONE and not f.outputs and counts[f.attempt_id] == 1),
            key=lambda f: f.attempt_id,
        )
        out: list[tuple[int, str | None, list[float]]] = []  # with the health values each adds
        if len(quick) > 1:
            ended = await self._finish_done_many(con, pilot_id, quick, now)
            value = site_health_value(Outcome.DONE)
            for fin in quick:
                ok = fin.attempt_id in ended
                out.append((fin.attempt_id, None if ok else STALE, [value] if ok and value is not None else []))
            batched = {f.attempt_id for f in quick}
            finished = [f for f in finished if f.attempt_id not in batched]
        for fin in sorted(finished, key=lambda f: f.attempt_id):  # one lock order for every replica
            values: list[float] = []
            out.append((fin.attempt_id, await self._finish(con, pilot_id, fin, now, values), values))
        out.sort(key=lambda r: r[0])  # the health averaged in attempt order, as one by one
        for _, _, values in out:
            health.extend(values)
        return [(attempt_id, reason) for attempt_id, reason, _ in out]

    @staticmethod
    async def _finish_done_many(con: Connection, pilot_id: int, done: list[Finish], now: float) -> set[int]:
        columns: list[list[object]] = [[] for _ in range(10)]
        for fin in done:
            cpu_s, provenance = provenance_columns(fin)
            row = (fin.exit_code, fin.reason, fin.wall_s, fin.max_rss_mb, fin.stdout_tail, fin.stderr_tail)
            for column, value in zip(columns, (*row, cpu_s, provenance, fin.attempt_id, fin.lease), strict=True):
                column.append(value)
        return {r[0] for r in await con.fetch(Q["attempt_end_done_many"], *columns, now, pilot_id)}

    async def _finish(self, con: Connection, pilot_id: int, fin: Finish, now: float, health: list[float]) -> str | None:
        """Apply a pilot's report of an ended attempt; the reason it was refused, or None."""
        if fin.outcome is Outcome.DONE and not fin.outputs:  # nothing to check: one statement
            row = (fin.exit_code, fin.reason, now, fin.wall_s, fin.max_rss_mb, fin.stdout_tail, fin.stderr_tail)
            args = (*row, fin.wall_s, fin.attempt_id, *provenance_columns(fin), fin.lease, pilot_id)
            if await con.fetchval(Q["attempt_end_done"], *args) is None:
                return STALE
            value = site_health_value(Outcome.DONE)
            if value is not None:
                health.append(value)
            return None
        job_id = await con.fetchval(Q["attempt_active"], fin.attempt_id, fin.lease, pilot_id)
        if job_id is None:
            return STALE
        uploaded: dict[str, tuple[str, int]] = {}
        if fin.outcome is Outcome.DONE and fin.outputs:
            uploaded = {n: (h, s) for n, h, s in await con.fetch(Q["outputs_of_attempt"], fin.attempt_id)}
        outcome, reason = check_outputs(fin, uploaded)
        await self._end_attempt(con, fin.attempt_id, job_id, outcome, fin.exit_code, reason, now, fin, health)
        return None

    async def _end_pilot(self, con: Connection, pilot_id: int, reason: str, now: float) -> None:
        await con.execute(Q["pilot_end"], now, reason, pilot_id)
        for attempt_id, job_id in await con.fetch(Q["active_attempts_of_pilot"], pilot_id):
            await self._end_attempt(
                con, attempt_id, job_id, Outcome.INTERRUPTED, None, f"its pilot ended: {reason}", now
            )

    async def _drop_lost_claims(
        self, con: Connection, pilot_id: int, held: set[int], seq: int | None, now: float
    ) -> set[int]:
        """Requeue claims the pilot does not hold: the answer that carried them never reached it.
        Returns the attempts so ended."""
        dropped: set[int] = set()
        for attempt_id, job_id, claim_seq in await con.fetch(Q["active_claims_of_pilot"], pilot_id):
            if attempt_id not in held and claim_lost(claim_seq, seq):
                why = "its claim never reached the pilot (the answer was lost on the way)"
                await self._end_attempt(con, attempt_id, job_id, Outcome.INTERRUPTED, None, why, now)
                dropped.add(attempt_id)
        return dropped

    async def record_output(
        self, pilot_id: int, attempt_id: int, lease: str, name: str, sha256: str, size: int
    ) -> None:
        async def tx(con: Connection) -> None:
            row = await con.fetchrow(Q["attempt_output_owner"], attempt_id, lease, pilot_id)
            if row is None:
                raise ConflictError("This attempt no longer owns its job (stale lease); the output was not kept.")
            if name not in spec_decoder.decode(row[1]).outputs:
                raise ValidationError(f"{name!r} is not one of the job's declared outputs.", field="name")
            await con.execute(Q["output_insert"], attempt_id, row[0], name, sha256, size)

        await self._tx(tx)

    async def pilot_exit(self, pilot_id: int, reason: str, occupancy: float, jobs_run: int, now: float) -> None:
        async def tx(con: Connection) -> None:
            await con.execute(Q["pilot_exit"], occupancy, reason, pilot_id)
            await self._end_pilot(con, pilot_id, reason, now)

        await self._tx(tx)

    async def expire(self, now: float, pilot_timeout_s: float) -> int:
        """Requeue attempts whose lease ran out; end pilots that stopped reporting. Replicas reaping
        at once skip each other's rows. Also folds the deltas of the demand and the counts."""

        async def tx(con: Connection) -> int:
            expired = await con.fetch(Q["expired_attempts"], now)
            for attempt_id, job_id in expired:
                why = "its pilot stopped reporting (lease expired)"
                await self._end_attempt(con, attempt_id, job_id, Outcome.LOST, None, why, now)
            for (pid,) in await con.fetch(Q["pilots_silent"], now - pilot_timeout_s):
                await self._end_pilot(con, pid, "lost: it stopped reporting", now)
            return len(expired)

        n = await self._tx(tx)
        await self.pool.execute(Q["deltas_compact"])
        return n
