"""Prometheus metrics of the server, with the ``prometheus-client`` library.

Two kinds: instruments updated as requests are served (claim and sync latency, staging bytes;
plain counts, see :mod:`glidein_server.instruments`), and gauges read from the store once per
scrape (:func:`families`, a pure function of a :class:`~glidein_server.store.monitoring.Monitoring`
snapshot). Labels are bounded: site, dataset (the busiest ``max_datasets``, the rest as
``other``), job type, owner, state, outcome — never a job or pilot id.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from glidein_server.instruments import ByteCounter, Latency
from glidein_server.store.monitoring import Monitoring, MonitoringStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
NO_DATASET = "none"
OTHER = "other"


def job_type(multicore: bool) -> str:
    return "multicore" if multicore else "single"


@dataclass(frozen=True)
class MetricsConfig:
    dataset_key: str = "dataset"  # the job label that names a job's dataset
    max_datasets: int = 50  # datasets beyond the busiest this many are summed as "other"
    client_dead_after_s: float = 90.0  # a site client silent this long is shown as down (3 cycles of 30 s)
    pilot_timeout_s: float = 180.0  # pilots silent this long no longer count as alive
    ui_sample_s: float = 10.0  # the web dashboard samples cores in use per site this often


def _datasets(rows: Iterable[tuple[str, str, bool, int, int]], limit: int) -> set[str]:
    """The ``limit`` datasets with the most running jobs: the others are summed as ``other``."""
    busy: Tally[str] = Tally()
    for _, dataset, _, n, _ in rows:
        busy[dataset] += n
    return {d for d, _ in busy.most_common(limit)}


def families(snap: Monitoring, now: float, cfg: MetricsConfig) -> list[Metric]:
    """Every gauge of one snapshot, labelled by site, dataset, job type, owner and state."""
    jobs = GaugeMetricFamily("glidein_jobs", "Jobs by owner, state and type.", labels=["owner", "state", "type"])
    for owner, state, multicore, n in snap.jobs:
        jobs.add_metric([owner, state, job_type(multicore)], n)

    kept = _datasets(snap.running, cfg.max_datasets)
    running: Tally[tuple[str, str, str]] = Tally()
    cores: Tally[tuple[str, str, str]] = Tally()
    for site, dataset, multicore, n, c in snap.running:
        key = (site, (dataset or NO_DATASET) if dataset in kept else OTHER, job_type(multicore))
        running[key] += n
        cores[key] += c
    labels = ["site", "dataset", "type"]
    running_jobs = GaugeMetricFamily(
        "glidein_running_jobs",
        "Jobs holding cores on pilots (claimed or running), by site, dataset and type.",
        labels=labels,
    )
    cores_used = GaugeMetricFamily(
        "glidein_running_cores", "Cores held by claimed and running jobs, by site, dataset and type.", labels=labels
    )
    for key in sorted(running):
        running_jobs.add_metric(list(key), running[key])
        cores_used.add_metric(list(key), cores[key])

    pilots = GaugeMetricFamily("glidein_pilots", "Live pilots by site and state.", labels=["site", "state"])
    pilot_cores = GaugeMetricFamily(
        "glidein_pilot_cores",
        "Cores of live pilots by site: allocated (running pilots), in_use (by jobs), idle, pending (queued).",
        labels=["site", "state"],
    )
    efficiency = GaugeMetricFamily(
        "glidein_pilot_internal_efficiency",
        "Pilot internal scheduling efficiency of running pilots, weighted by cores: time their cores ran jobs over "
        "their running time.",
        labels=["site"],
    )
    for p in snap.pilots:
        pilots.add_metric([p.site, p.state], p.pilots)
        if p.state == "running":
            pilot_cores.add_metric([p.site, "allocated"], p.cores)
            pilot_cores.add_metric([p.site, "in_use"], p.cores - p.cores_free)
            pilot_cores.add_metric([p.site, "idle"], p.cores_free)
            if p.cores:
                efficiency.add_metric([p.site], p.occupancy_core_weighted / p.cores)
        else:
            pilot_cores.add_metric([p.site, "pending"], p.cores)

    site_families = _site_families(snap, now, cfg)
    attempts = CounterMetricFamily(
        "glidein_attempts", "Ended attempts by site and outcome.", labels=["site", "outcome"]
    )
    for site, outcome, n in snap.attempts:
        attempts.add_metric([site, outcome], n)
    return [jobs, running_jobs, cores_used, pilots, pilot_cores, efficiency, *site_families, attempts]


def _site_families(snap: Monitoring, now: float, cfg: MetricsConfig) -> list[Metric]:
    def gauge(name: str, text: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=["site"])

    pressure = gauge("glidein_multicore_pressure", "Idle multicore jobs that may run at the site.")
    demand_pilots = gauge("glidein_demand_pilots", "Pilots the site should start, net of free capacity.")
    demand_cores = gauge("glidein_demand_cores", "Cores of idle work the site should run.")
    health = gauge("glidein_site_health", "Moving average of attempt success at the site (1 good, 0 bad).")
    failures = gauge("glidein_site_start_failures", "Pilots in a row that ended without starting work.")
    backoff = gauge("glidein_site_backoff_seconds", "Seconds before the site should submit pilots again.")
    seen = gauge("glidein_site_client_last_contact_timestamp_seconds", "When the site's client last reported.")
    up = gauge(
        "glidein_site_client_up", f"1 if the site's client reported in the last {cfg.client_dead_after_s:.0f} s."
    )
    for s in snap.sites:
        pressure.add_metric([s.name], s.multicore_idle)
        demand_pilots.add_metric([s.name], s.demand_pilots)
        demand_cores.add_metric([s.name], s.demand_cores)
        health.add_metric([s.name], s.health)
        failures.add_metric([s.name], s.start_failures)
        backoff.add_metric([s.name], s.backoff_s)
        if s.last_seen is not None:
            seen.add_metric([s.name], s.last_seen)
        alive = s.last_seen is not None and now - s.last_seen <= cfg.client_dead_after_s
        up.add_metric([s.name], 1.0 if alive else 0.0)
    return [pressure, demand_pilots, demand_cores, health, failures, backoff, seen, up]


class _Families(Collector):
    """Yields the families of one scrape: the store's snapshot read for it, then the instruments'."""

    def __init__(self, instruments: list[Latency | ByteCounter]) -> None:
        self.instruments = instruments
        self.current: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        yield from self.current
        for instrument in self.instruments:
            yield instrument.family()


class Metrics:
    """The server's registry: request instruments plus the store's snapshot, rendered per scrape.

    Nothing is kept per job: the counts come from the store's running aggregates when a scrape
    asks, and a sync costs two histogram observations (see :mod:`glidein_server.instruments`).
    """

    def __init__(self, store: MonitoringStore, config: MetricsConfig) -> None:
        self.store = store
        self.config = config
        self.claim_latency = Latency(
            "glidein_claim_latency_seconds",
            "Time the store took to answer a pilot's sync (reports and claims), without any long-poll wait.",
            LATENCY_BUCKETS,
        )
        self.sync_latency = Latency(
            "glidein_sync_latency_seconds",
            "Time to answer a pilot's sync request, long-poll wait included.",
            (*LATENCY_BUCKETS, 5.0, 10.0, 30.0, 60.0),
        )
        self.staging_bytes = ByteCounter(
            "glidein_staging_bytes",
            "Bytes of files received: input (uploaded by users) and output (uploaded by pilots).",
            "direction",
            ("input", "output"),
        )
        self._families = _Families([self.claim_latency, self.sync_latency, self.staging_bytes])
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._families)

    async def render(self, now: float) -> bytes:
        cfg = self.config
        snap = await self.store.monitoring(now, cfg.dataset_key, now - cfg.pilot_timeout_s)
        # No await from here on: concurrent scrapes cannot see each other's snapshot.
        self._families.current = families(snap, now, cfg)
        try:
            return generate_latest(self.registry)
        finally:
            self._families.current = []
