"""Jobs, files, sites, demand, the summary and out-of-job staging in the PostgreSQL store."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from glidein_client.wire.errors import NotFoundError
from glidein_client.wire.schema import (
    AttemptView,
    Demand,
    JobSpec,
    JobState,
    JobView,
    OutputFile,
    PilotShape,
    Provenance,
    Role,
    SiteMode,
    SiteView,
    Summary,
    Usage,
)
from glidein_client.wire.staging import Network, StagingJob, StagingView
from glidein_server.policy import demand as dm
from glidein_server.policy import site_control
from glidein_server.policy.lifecycle import site_backoff
from glidein_server.store.added import added, sites_key
from glidein_server.store.base import JobFilter, Principal
from glidein_server.store.history import events_by_job, with_history
from glidein_server.store.postgres_base import Connection, Q, Record
from glidein_server.store.postgres_tokens import PostgresTokens
from glidein_server.store.sqlite_sites import sites_from_key
from glidein_server.store.sqlite_usage import attempt_view, efficiency

spec_decoder = msgspec.json.Decoder(JobSpec)
spec_encoder = msgspec.json.Encoder()
provenance_decoder = msgspec.json.Decoder(Provenance)
#: The columns a submit copies into the jobs table, in the order of its rows.
JOB_COLUMNS = (
    *("id", "owner", "state", "spec", "cpus", "memory_mb", "gpus", "disk_mb", "walltime_s", "sites", "priority"),
    *("max_retries", "submitted_at"),
)


def columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows turned into ``width`` columns, as arrays for ``unnest``."""
    return [[row[i] for row in rows] for i in range(width)]


class PostgresJobs(PostgresTokens):
    async def _load(self) -> None:
        await super()._load()
        await self._refresh_site_shapes(None)

    async def _refresh_site_shapes(self, con: Connection | None) -> None:
        """Another replica may have heard from a site: the shapes are re-read where they matter."""
        rows = await (con or self.pool).fetch(Q["site_shapes"])
        self._site_shapes = {name: msgspec.json.decode(shape, type=PilotShape) for name, shape in rows}

    async def add_jobs(self, owner: str, specs: Sequence[JobSpec], now: float) -> list[int]:
        if not specs:
            return []
        groups = added(specs)
        shapes = columns([(*shape, n) for shape, n in groups.shapes.items()], 7)
        counts = columns([(m, n, groups.cores[m]) for m, n in groups.multicore.items()], 3)
        labels = columns([(*label, len(jobs)) for label, jobs in groups.labels.items()], 3)

        async def tx(con: Connection) -> list[int]:
            ids: list[int] = await con.fetchval(Q["job_ids"], len(specs))
            rows = [
                (
                    *(job_id, owner, "idle", spec_encoder.encode(s).decode()),
                    *(s.cpus, s.memory_mb, s.gpus, s.disk_mb, s.walltime_s),
                    *(sites_key(s.sites), s.priority, s.max_retries, now),
                )
                for job_id, s in zip(ids, specs, strict=True)
            ]
            await con.copy_records_to_table("jobs", records=rows, columns=JOB_COLUMNS)
            await con.execute(Q["jobs_added"], *shapes, owner, *counts, *labels)
            return ids

        ids = await self._tx(tx)
        self.statistics.added(len(ids), self.pool)
        return ids

    async def _job_views(self, con: Connection, rows: Sequence[Record]) -> list[JobView]:
        """The jobs' views; the outputs and usage of the finished ones read for all of them at once."""
        results = [row[11] for row in rows if row[11] is not None]
        outputs: dict[int, list[OutputFile]] = {}
        usage: dict[int, Record] = {}
        if results:
            for attempt_id, name, sha, size in await con.fetch(Q["outputs_of_attempts"], results):
                outputs.setdefault(attempt_id, []).append(OutputFile(name=name, sha256=sha, size=size))
            usage = {r[0]: r for r in await con.fetch(Q["usage_of_attempts"], results)}
        return [self._job_view(row, outputs, usage) for row in rows]

    def _job_view(self, row: Record, outputs: dict[int, list[OutputFile]], usage: dict[int, Record]) -> JobView:
        (jid, owner, state, spec_t, retries, attempts, submitted, finished, exit_code, reason, site, result_attempt) = (
            row
        )
        spec = spec_decoder.decode(spec_t)
        note = None
        if state == JobState.IDLE.value:
            sites = frozenset(spec.sites) if spec.sites else None
            note = dm.unrunnable_note(
                spec.cpus, spec.memory_mb, spec.gpus, spec.disk_mb, spec.walltime_s, sites, self._site_shapes
            )
        used = usage.get(result_attempt) if result_attempt is not None else None
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
            outputs=outputs.get(result_attempt, []) if result_attempt is not None else [],
            note=note,
            usage=None if used is None else _usage(used, spec.cpus),
        )

    async def _read_job(self, con: Connection, job_id: int) -> JobView | None:
        row = await con.fetchrow(Q["job_get"], job_id)
        return None if row is None else (await self._with_history(con, await self._job_views(con, [row])))[0]

    @staticmethod
    async def _with_history(con: Connection, views: list[JobView]) -> list[JobView]:
        """The views with their jobs' history (holds, releases, retries by request), in one query."""
        if not views:
            return views
        events = events_by_job(tuple(r) for r in await con.fetch(Q["job_events_of"], [v.id for v in views]))
        return with_history(views, events)

    async def list_jobs(self, flt: JobFilter) -> tuple[list[JobView], dict[str, int]]:
        labels = dict(flt.all_labels)
        if len(labels) < len(set(flt.all_labels)):  # one key asked with two values: no job
            return [], {}
        where: list[tuple[str, Any]] = []
        if flt.owner is not None:
            where.append(("job_where_owner", flt.owner))
        if labels:
            where.append(("job_where_labels", json.dumps(labels)))
        if flt.ids is not None:
            where.append(("job_where_ids", list(flt.ids)))
        state = "job_where_state" if flt.state == JobState.IDLE.value else "job_where_state_not_idle"
        page = [*where, (state, flt.state)] if flt.state else where
        if flt.after is not None:
            page = [*page, ("job_where_before" if flt.newest_first else "job_where_after", flt.after)]
        page_sql, page_args = _conditions("job_page", page)
        n = len(page_args)
        order = "DESC" if flt.newest_first else "ASC"
        page_sql = page_sql.replace("{limit}", f"${n + 1}").replace("{offset}", f"${n + 2}").replace("{order}", order)

        async def read(con: Connection) -> tuple[list[JobView], dict[str, int]]:
            # Planned afresh for each call when labels filter: a plan made for a common label (scan
            # the jobs in id order) would scan the whole table for a rare one, and the reverse.
            stmt = await con.prepare(page_sql) if labels else None
            args = (*page_args, flt.limit, flt.offset)
            rows = await (stmt.fetch(*args) if stmt is not None else con.fetch(page_sql, *args))
            views = await self._with_history(con, await self._job_views(con, rows))
            return views, await self._list_counts(con, flt, labels, where) if flt.counts else {}

        return await self._read(read)

    @staticmethod
    async def _list_counts(
        con: Connection, flt: JobFilter, labels: dict[str, str], where: list[tuple[str, Any]]
    ) -> dict[str, int]:
        if flt.ids is not None or len(labels) > 1:
            return {s: n for s, n in await con.fetch(*_conditions_args("job_counts", where))}
        if labels:  # one label: from the running aggregate, not a count of the jobs
            [(key, value)] = labels.items()
            return {s: n for s, n in await con.fetch(Q["label_counts"], key, value, flt.owner)}
        return {s: n for s, n in await con.fetch(Q["summary_jobs"], flt.owner)}

    async def get_job(self, job_id: int) -> JobView | None:
        return await self._read(self._read_job, job_id)

    async def cancel_job(self, job_id: int, now: float) -> JobView:
        async def tx(con: Connection) -> JobView:
            state = await con.fetchval(Q["job_state_for_update"], job_id)
            if state is None:
                raise NotFoundError(f"Job {job_id} does not exist.")
            if not JobState(state).final:
                await con.execute(Q["job_cancel"], now, job_id)
            view = await self._read_job(con, job_id)
            assert view is not None
            return view

        return await self._tx(tx)

    async def attempts_of(self, job_id: int) -> list[AttemptView]:
        async def read(con: Connection) -> list[AttemptView]:
            out = []
            for row in await con.fetch(Q["attempts_of_job"], job_id):
                files = await con.fetch(Q["outputs_of_attempt"], row[0])
                out.append(attempt_view(tuple(row), [OutputFile(name=n, sha256=h, size=z) for n, h, z in files]))
            return out

        return await self._read(read)

    async def job_output(self, job_id: int, name: str) -> OutputFile | None:
        row = await self.pool.fetchrow(Q["job_output"], job_id, name)
        return None if row is None else OutputFile(name=row[0], sha256=row[1], size=row[2])

    async def add_file_owner(self, sha256: str, owner: str, size: int) -> None:
        await self.pool.execute(Q["file_owner_insert"], sha256, owner, size)

    async def may_read_file(self, sha256: str, principal: Principal) -> bool:
        if principal.role is Role.OPERATOR:
            return True
        if principal.role is Role.SITE:
            return bool(await self.pool.fetchval(Q["site_may_read_file"], f",{principal.subject},", sha256))
        if principal.role is Role.USER:
            return bool(await self.pool.fetchval(Q["file_user_may_read"], sha256, principal.subject))
        return bool(await self.pool.fetchval(Q["file_pilot_may_read"], int(principal.subject), sha256))

    # --- sites and demand -------------------------------------------------------------------

    async def report_site(self, site: str, shape: PilotShape, now: float) -> None:
        self._site_shapes[site] = shape
        await self.pool.execute(Q["site_report"], site, msgspec.json.encode(shape).decode(), now)

    async def site_shapes(self) -> dict[str, PilotShape]:
        await self._refresh_site_shapes(None)
        return dict(self._site_shapes)

    async def site_demand(self, site: str, now: float, live_after: float) -> Demand:
        # One statement, one round trip: the sites, the idle shapes (kept aggregate), the live pilots.
        read = await self.pool.fetchrow(Q["site_demand_read"], site, live_after)
        assert read is not None  # one row, always
        sites, rows, live, alive = read
        self._site_shapes = {r[0]: msgspec.json.decode(r[1], type=PilotShape) for r in sites if r[1] is not None}
        shapes = [dm.Shape(c, m, g, d, w, sites_from_key(s), n) for c, m, g, d, w, s, n in rows]
        free = [dm.FreeCapacity(*r) for r in live]
        health = {r[0]: r[2] for r in sites}
        demand = dm.site_demand(site, shapes, self._site_shapes, free, health)
        row = next((r for r in sites if r[0] == site), None)
        failures, backoff = site_backoff(row[3], row[4], now) if row else (0, 0.0)
        mode, max_cpus = (SiteMode(row[5]), row[6]) if row else (SiteMode.OPEN, None)
        shape = self._site_shapes.get(site)
        pilots = site_control.demanded_pilots(demand.pilots, mode, max_cpus, shape.cpus if shape else 1, alive or 0)
        return msgspec.structs.replace(
            demand, pilots=pilots, start_failures=failures, backoff_s=backoff, mode=mode, max_cpus=max_cpus
        )

    async def summary(self, owner: str | None) -> Summary:
        async def read(con: Connection) -> Summary:
            jobs = {s: n for s, n in await con.fetch(Q["summary_jobs"], owner)}
            pilots = {s: n for s, n in await con.fetch(Q["summary_pilots"])}
            occ = await con.fetchrow(Q["summary_occupancy"])
            in_use = {name: int(n) for name, n in await con.fetch(Q["sites_cpus_in_use"])}
            live: dict[str, dict[str, int]] = {}
            for site, state, n in await con.fetch(Q["summary_site_pilots"]):
                live.setdefault(site, {})[state] = n
            now = time.time()
            sites = []
            for name, shape, seen, failures_in_a_row, last_failure, mode, max_cpus, pilot_failure in await con.fetch(
                Q["summary_sites"]
            ):
                failures, backoff = site_backoff(failures_in_a_row, last_failure, now)
                counts = live.get(name, {})
                sites.append(
                    SiteView(
                        name=name,
                        shape=msgspec.json.decode(shape, type=PilotShape) if shape else None,
                        pilots_running=counts.get("running", 0),
                        pilots_pending=counts.get("pending", 0),
                        last_seen=seen,
                        start_failures=failures,
                        backoff_s=backoff,
                        mode=SiteMode(mode),
                        max_cpus=max_cpus,
                        cpus_in_use=in_use.get(name, 0),
                        pilot_failure=pilot_failure,
                    )
                )
            occupancy = occ[0] / occ[1] if occ and occ[1] else None
            problems = [
                f"pilot {pid} at site {site} on {host or 'an unknown host'}: {reason}"
                for pid, site, host, reason in await con.fetch(Q["summary_problems"], now - 86400)
            ]
            return Summary(jobs=jobs, pilots=pilots, sites=sites, occupancy=occupancy, problems=problems)

        return await self._read(read)

    # --- the operator's hand: drain, pause, cap ---------------------------------------------------

    async def set_site_mode(self, site: str, mode: SiteMode) -> None:
        await self.pool.execute(Q["site_mode_set"], site, mode.value)

    async def set_site_cap(self, site: str, max_cpus: int | None) -> None:
        await self.pool.execute(Q["site_cap_set"], site, max_cpus)

    # --- firewalled sites: out-of-job staging ----------------------------------------------------

    async def set_site_network(self, site: str, network: Network, now: float) -> bool:
        async def tx(con: Connection) -> bool:
            old = await con.fetchval(Q["site_network_get"], site)
            await con.execute(Q["site_network_set"], site, network.value, now)
            return bool(old != network.value)

        return await self._tx(tx)

    async def staging_view(self, site: str, limit: int) -> StagingView:
        await self._refresh_site_shapes(None)
        shape = self._site_shapes.get(site)
        fit = (
            (shape.cpus, shape.memory_mb, shape.gpus, shape.disk_mb, shape.walltime_s)
            if shape is not None
            else (1 << 62,) * 5
        )

        def job(row: Record) -> StagingJob:
            spec = spec_decoder.decode(row[3])
            return StagingJob(job_id=row[0], state=JobState(row[1]), site=row[2], cpus=spec.cpus, inputs=spec.inputs)

        async def read(con: Connection) -> StagingView:
            staged = [job(r) for r in await con.fetch(Q["staging_staged"], site)]
            eligible = [job(r) for r in await con.fetch(Q["staging_eligible"], f",{site},", *fit, site, limit)]
            return StagingView(staged=staged, eligible=eligible)

        return await self._read(read)

    async def report_staging(
        self, site: str, staged: Sequence[int], released: Sequence[int], now: float
    ) -> tuple[int, int]:
        async def tx(con: Connection) -> tuple[int, int]:
            added = int((await con.execute(Q["staged_insert"], site, now, list(staged), f",{site},")).split()[-1])
            dropped = int((await con.execute(Q["staged_delete"], site, list(released))).split()[-1])
            if added:
                await con.execute(Q["notify_work"])  # the site's waiting pilots (on any replica) may claim them
            return added, dropped

        return await self._tx(tx)


def _usage(row: Record, cpus: int) -> Usage:
    attempt_id, wall_s, max_rss_mb, cpu_s, prov = row
    return Usage(
        attempt_id=attempt_id,
        cpus=cpus,
        wall_s=wall_s,
        max_rss_mb=max_rss_mb,
        cpu_s=cpu_s,
        cpu_efficiency=efficiency(cpu_s, wall_s, cpus),
        provenance=provenance_decoder.decode(prov) if prov else None,
    )


def _conditions(block: str, where: list[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """SQL block ``block`` with its ``{where}`` made of the named conditions, numbered $1, $2, ..."""
    parts = [Q[name].replace("${n}", f"${i}") for i, (name, _) in enumerate(where, 1)]
    return Q[block].replace("{where}", " AND ".join(parts) or "true"), [arg for _, arg in where]


def _conditions_args(block: str, where: list[tuple[str, Any]]) -> list[Any]:
    sql, args = _conditions(block, where)
    return [sql, *args]
