"""The monitoring snapshot of the PostgreSQL store: running aggregates, live pilots, sites and their demand."""

from __future__ import annotations

from glidein_server.policy import demand as dm
from glidein_server.policy.lifecycle import site_backoff
from glidein_server.store.monitoring import DatasetRow, Monitoring, PilotRow, SiteRow, running_by_dataset
from glidein_server.store.postgres_base import Connection, Q
from glidein_server.store.postgres_jobs import PostgresJobs
from glidein_server.store.sqlite_sites import sites_from_key


class PostgresMonitoring(PostgresJobs):
    async def monitoring(self, now: float, dataset_key: str, live_after: float) -> Monitoring:
        async def read(con: Connection) -> Monitoring:
            await self._refresh_site_shapes(con)
            rows = await con.fetch(Q["idle_shapes"])
            shapes = [dm.Shape(c, m, g, d, w, sites_from_key(s), n) for c, m, g, d, w, s, n in rows]
            health = {name: h for name, h in await con.fetch(Q["site_health_all"])}
            sites = []
            for name, last_seen, site_health, failures_in_a_row, last_failure in await con.fetch(Q["monitoring_sites"]):
                free = [dm.FreeCapacity(*r) for r in await con.fetch(Q["live_pilots_free"], name, live_after)]
                demand = dm.site_demand(name, shapes, self._site_shapes, free, health)
                failures, backoff = site_backoff(failures_in_a_row, last_failure, now)
                multicore = sum(s.count for s in shapes if s.cpus > 1 and (s.sites is None or name in s.sites))
                sites.append(
                    SiteRow(name, last_seen, site_health, failures, backoff, demand.pilots, demand.cpus, multicore)
                )
            return Monitoring(
                jobs=[(o, s, bool(m), n) for o, s, m, n in await con.fetch(Q["monitoring_jobs"])],
                running=running_by_dataset(tuple(r) for r in await con.fetch(Q["monitoring_running"], dataset_key)),
                pilots=[PilotRow(*r) for r in await con.fetch(Q["monitoring_pilots"], live_after)],
                sites=sites,
                attempts=[(s, o, n) for s, o, n in await con.fetch(Q["monitoring_attempts"])],
            )

        return await self._read(read)

    async def datasets(self, dataset_key: str) -> list[DatasetRow]:
        async def read(con: Connection) -> list[DatasetRow]:
            states: dict[str, dict[str, int]] = {}
            cores: dict[str, int] = {}
            for name, state, n, running_cores in await con.fetch(Q["dataset_states"], dataset_key):
                states.setdefault(name, {})[state] = n
                cores[name] = cores.get(name, 0) + running_cores
            used = {name: (cpu, wall) for name, cpu, wall in await con.fetch(Q["dataset_efficiency"], dataset_key)}
            return [DatasetRow(name, states[name], cores[name], *used.get(name, (0.0, 0.0))) for name in sorted(states)]

        return await self._read(read)
