"""Sites in the SQLite store: their pilot shapes, demand, back-off, the summary, and out-of-job staging."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from glidein_client.wire.schema import Demand, JobSpec, JobState, PilotShape, SiteMode, SiteView, Summary
from glidein_client.wire.staging import Network, StagingJob, StagingView
from glidein_server.policy import demand as dm
from glidein_server.policy import site_control
from glidein_server.policy.lifecycle import site_backoff
from glidein_server.store.added import sites_key as sites_key
from glidein_server.store.sqlite_base import Q
from glidein_server.store.sqlite_tokens import SqliteTokens

spec_decoder = msgspec.json.Decoder(JobSpec)


def sites_from_key(key: str) -> frozenset[str] | None:
    return None if not key else frozenset(s for s in key.split(",") if s)


class SqliteSites(SqliteTokens):
    """Sites, with what every sync asks of its site kept in memory: the operator's mode and cap, and
    whether the site stages inputs out of the job. This store's own changes replace them at once;
    another process's (``glidein-server site drain``) are noticed as its tokens' are (``PRAGMA
    data_version``: by the worker's next batch, by the pilots' quick calls at most ``LOOK_S`` after
    the last look)."""

    _site_controls: dict[str, tuple[SiteMode, int | None]]
    _site_staging: dict[str, bool]

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._forget_sites()

    def _forget_sites(self) -> None:
        self._site_controls, self._site_staging = {}, {}

    def _changed_elsewhere(self) -> None:
        super()._changed_elsewhere()
        self._forget_sites()

    def _rolled_back(self) -> None:
        super()._rolled_back()
        self._forget_sites()

    def _load_site_shapes(self, db: sqlite3.Connection) -> None:
        for name, shape in db.execute(Q["site_shapes"]):
            self._site_shapes[name] = msgspec.json.decode(shape, type=PilotShape)

    async def report_site(self, site: str, shape: PilotShape, now: float) -> None:
        self._site_shapes[site] = shape
        await self._tx(lambda db: db.execute(Q["site_report"], (site, msgspec.json.encode(shape), now)))

    async def site_shapes(self) -> dict[str, PilotShape]:
        return dict(self._site_shapes)

    async def site_demand(self, site: str, now: float, live_after: float) -> Demand:
        def read(db: sqlite3.Connection) -> Demand:
            shapes = [
                dm.Shape(c, m, g, d, w, sites_from_key(s), n) for c, m, g, d, w, s, n in db.execute(Q["idle_shapes"])
            ]
            free = [dm.FreeCapacity(*r) for r in db.execute(Q["live_pilots_free"], (site, live_after))]
            health = dict(db.execute(Q["site_health_all"]).fetchall())
            demand = dm.site_demand(site, shapes, self._site_shapes, free, health)
            row = db.execute(Q["site_failures"], (site,)).fetchone()
            failures, backoff = site_backoff(row[0], row[1], now) if row else (0, 0.0)
            mode, max_cpus = self._site_control(db, site)
            shape = self._site_shapes.get(site)
            alive = db.execute(Q["site_pilots_alive"], (site,)).fetchone()[0] if max_cpus is not None else 0
            pilots = site_control.demanded_pilots(demand.pilots, mode, max_cpus, shape.cpus if shape else 1, alive)
            return msgspec.structs.replace(
                demand, pilots=pilots, start_failures=failures, backoff_s=backoff, mode=mode, max_cpus=max_cpus
            )

        return await self._read(read, self._conn)

    async def summary(self, owner: str | None) -> Summary:
        def read(db: sqlite3.Connection) -> Summary:
            if owner is None:
                jobs = dict(db.execute(Q["summary_jobs"]).fetchall())
            else:
                jobs = dict(db.execute(Q["summary_jobs_of_owner"], (owner,)).fetchall())
            pilots = dict(db.execute(Q["summary_pilots"]).fetchall())
            occ = db.execute(Q["summary_occupancy"]).fetchone()
            now = time.time()
            sites = []
            for name, shape, seen, failures_in_a_row, last_failure, mode, max_cpus, pilot_failure in db.execute(
                Q["summary_sites"]
            ).fetchall():
                failures, backoff = site_backoff(failures_in_a_row, last_failure, now)
                counts = dict(db.execute(Q["summary_site_pilots"], (name,)).fetchall())
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
                        cpus_in_use=db.execute(Q["site_cpus_in_use"], (name,)).fetchone()[0],
                        pilot_failure=pilot_failure,
                    )
                )
            occupancy = occ[0] / occ[1] if occ and occ[1] else None
            problems = [
                f"pilot {pid} at site {site} on {host or 'an unknown host'}: {reason}"
                for pid, site, host, reason in db.execute(Q["summary_problems"], (now - 86400,))
            ]
            return Summary(jobs=jobs, pilots=pilots, sites=sites, occupancy=occupancy, problems=problems)

        return await self._read(read, self._conn)

    # --- the operator's hand: drain, pause, cap ---------------------------------------------------

    async def set_site_mode(self, site: str, mode: SiteMode) -> None:
        def tx(db: sqlite3.Connection) -> None:
            self._site_controls.pop(site, None)
            db.execute(Q["site_mode_set"], (site, mode.value))

        await self._tx(tx)

    async def set_site_cap(self, site: str, max_cpus: int | None) -> None:
        def tx(db: sqlite3.Connection) -> None:
            self._site_controls.pop(site, None)
            db.execute(Q["site_cap_set"], (site, max_cpus))

        await self._tx(tx)

    def _site_control(self, db: sqlite3.Connection, site: str) -> tuple[SiteMode, int | None]:
        """The operator's mode and cap of the site (kept in memory)."""
        control = self._site_controls.get(site)
        if control is None:
            row = db.execute(Q["site_control_get"], (site,)).fetchone()
            control = self._site_controls[site] = (SiteMode(row[0]), row[1]) if row else (SiteMode.OPEN, None)
        return control

    def _claim_room(self, db: sqlite3.Connection, site: str) -> int | None:
        """The cores the site's pilots may still claim (None: no limit), as the operator set."""
        mode, max_cpus = self._site_control(db, site)
        in_use = db.execute(Q["site_cpus_in_use"], (site,)).fetchone()[0] if max_cpus is not None else 0
        return site_control.claim_room(mode, max_cpus, in_use)

    # --- firewalled sites: out-of-job staging ----------------------------------------------------

    async def set_site_network(self, site: str, network: Network, now: float) -> bool:
        """Record how the site's pilots reach the server; True when that changed."""

        def tx(db: sqlite3.Connection) -> bool:
            self._site_staging.pop(site, None)
            row = db.execute(Q["site_network_get"], (site,)).fetchone()
            db.execute(Q["site_network_set"], (site, network.value, now))
            return row is None or row[0] != network.value

        return await self._tx(tx)

    def _site_stages(self, db: sqlite3.Connection, site: str) -> bool:
        """Whether the site's client stages inputs out of the job (kept in memory)."""
        stages = self._site_staging.get(site)
        if stages is None:
            row = db.execute(Q["site_network_get"], (site,)).fetchone()
            stages = self._site_staging[site] = row is not None and Network(row[0]).stages
        return stages

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
            spec = spec_decoder.decode(row[3])
            return StagingJob(job_id=row[0], state=JobState(row[1]), site=row[2], cpus=spec.cpus, inputs=spec.inputs)

        def read(db: sqlite3.Connection) -> StagingView:
            staged = [job(r) for r in db.execute(Q["staging_staged"], (site,))]
            eligible = [job(r) for r in db.execute(Q["staging_eligible"], (f",{site},", *fit, site, limit))]
            return StagingView(staged=staged, eligible=eligible)

        return await self._read(read, self._conn)

    async def report_staging(
        self, site: str, staged: Sequence[int], released: Sequence[int], now: float
    ) -> tuple[int, int]:
        def tx(db: sqlite3.Connection) -> tuple[int, int]:
            added = sum(db.execute(Q["staged_insert"], (site, now, job_id, f",{site},")).rowcount for job_id in staged)
            dropped = sum(db.execute(Q["staged_delete"], (site, job_id)).rowcount for job_id in released)
            return added, dropped

        return await self._tx(tx)
