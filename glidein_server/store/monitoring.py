"""What the monitoring reads from a store: one consistent snapshot of counts, per scrape.

Every part is small and bounded by the number of sites, owners, states and running jobs, never by
the number of jobs: job and attempt counts are running aggregates the store keeps as it goes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SiteRow:
    name: str
    last_seen: float | None
    health: float
    start_failures: int
    backoff_s: float
    demand_pilots: int
    demand_cores: float
    multicore_idle: int  # idle multicore jobs eligible at the site (multicore pressure)


@dataclass(frozen=True)
class PilotRow:
    site: str
    state: str  # pending | running
    pilots: int
    cores: int  # allocated
    cores_free: int  # of running pilots: allocated but idle
    occupancy_core_weighted: float  # sum(occupancy * cores) of running pilots


@dataclass(frozen=True)
class Monitoring:
    jobs: list[tuple[str, str, bool, int]] = field(default_factory=list)  # owner, state, multicore, n
    #: site, dataset, multicore, running jobs, their cores
    running: list[tuple[str, str, bool, int, int]] = field(default_factory=list)
    pilots: list[PilotRow] = field(default_factory=list)
    sites: list[SiteRow] = field(default_factory=list)
    attempts: list[tuple[str, str, int]] = field(default_factory=list)  # site, outcome, n (ever)


def running_by_dataset(rows: Iterable[tuple[str, str, str, int, int, int]]) -> list[tuple[str, str, bool, int, int]]:
    """The running jobs and their cores per site, dataset and multicore, from the kept counts of active
    attempts: rows (site, key, value, multicore, n, cores), key '' for every job of the site, the
    dataset key for those carrying it; jobs without the label count under dataset ''."""
    out: dict[tuple[str, str, bool], tuple[int, int]] = {}
    for site, key, value, multicore, n, cores in rows:
        for where, sign in (((site, value), 1), ((site, ""), -1)) if key else (((site, ""), 1),):
            had_n, had_cores = out.get((*where, bool(multicore)), (0, 0))
            out[(*where, bool(multicore))] = (had_n + sign * n, had_cores + sign * cores)
    return [(site, value, multicore, n, cores) for (site, value, multicore), (n, cores) in sorted(out.items()) if n]


@dataclass(frozen=True)
class DatasetRow:
    name: str  # '' = jobs without the dataset label
    states: dict[str, int]
    cores_in_use: int
    cpu_s: float  # of ended attempts that reported it
    core_wall_s: float  # their wall time times their cores


class MonitoringStore(Protocol):
    async def monitoring(self, now: float, dataset_key: str, live_after: float) -> Monitoring:
        """Counts for the metrics and dashboards; pilots seen after ``live_after`` count as alive."""
        ...

    async def datasets(self, dataset_key: str) -> list[DatasetRow]:
        """Progress and CPU efficiency per dataset (reads every job: for a page an operator opens, not scrapes)."""
        ...
