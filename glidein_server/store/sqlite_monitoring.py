"""The monitoring snapshot of the SQLite store: running aggregates, live pilots, sites and their demand."""

from __future__ import annotations

import sqlite3

from glidein_server.policy import demand as dm
from glidein_server.policy.lifecycle import site_backoff
from glidein_server.store.monitoring import DatasetRow, Monitoring, PilotRow, SiteRow, running_by_dataset
from glidein_server.store.sqlite_base import Q
from glidein_server.store.sqlite_sites import SqliteSites, sites_from_key


class SqliteMonitoring(SqliteSites):
    async def monitoring(self, now: float, dataset_key: str, live_after: float) -> Monitoring:
        def read(db: sqlite3.Connection) -> Monitoring:
            shapes = [
                dm.Shape(c, m, g, d, w, sites_from_key(s), n) for c, m, g, d, w, s, n in db.execute(Q["idle_shapes"])
            ]
            health = dict(db.execute(Q["site_health_all"]).fetchall())
            site_shapes = dict(self._site_shapes)
            sites = []
            for name, last_seen, site_health, failures_in_a_row, last_failure in db.execute(Q["monitoring_sites"]):
                free = [dm.FreeCapacity(*r) for r in db.execute(Q["live_pilots_free"], (name, live_after))]
                demand = dm.site_demand(name, shapes, site_shapes, free, health)
                failures, backoff = site_backoff(failures_in_a_row, last_failure, now)
                multicore = sum(s.count for s in shapes if s.cpus > 1 and (s.sites is None or name in s.sites))
                sites.append(
                    SiteRow(name, last_seen, site_health, failures, backoff, demand.pilots, demand.cpus, multicore)
                )
            return Monitoring(
                jobs=[(o, s, bool(m), n) for o, s, m, n in db.execute(Q["monitoring_jobs"])],
                running=running_by_dataset(db.execute(Q["monitoring_running"], (dataset_key,))),
                pilots=[PilotRow(*r) for r in db.execute(Q["monitoring_pilots"], (live_after,))],
                sites=sites,
                attempts=[(s, o, n) for s, o, n in db.execute(Q["monitoring_attempts"])],
            )

        return await self._read(read, self._conn)

    async def datasets(self, dataset_key: str) -> list[DatasetRow]:
        def read(db: sqlite3.Connection) -> list[DatasetRow]:
            states: dict[str, dict[str, int]] = {}
            cores: dict[str, int] = {}
            for name, state, n, running_cores in db.execute(Q["dataset_states"], (dataset_key,)):
                states.setdefault(name, {})[state] = n
                cores[name] = cores.get(name, 0) + (running_cores or 0)
            used = {name: (cpu, wall) for name, cpu, wall in db.execute(Q["dataset_efficiency"], (dataset_key,))}
            return [DatasetRow(name, states[name], cores[name], *used.get(name, (0.0, 0.0))) for name in sorted(states)]

        return await self._read(read, self._conn)
