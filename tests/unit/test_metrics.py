"""The gauges of one monitoring snapshot: bounded labels, core-weighted pilots, dead site clients; the
request instruments expose what the library's own would."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from glidein_client.wire.schema import JobSpec
from glidein_server.instruments import ByteCounter, Latency
from glidein_server.metrics import MetricsConfig, families
from glidein_server.store.monitoring import Monitoring, PilotRow, SiteRow
from glidein_server.store.sqlite import SqliteStore


def _samples(metrics: list[Metric], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    (family,) = [m for m in metrics if m.name == name]
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def test_datasets_beyond_the_busiest_are_summed_as_other() -> None:
    running = [("a", f"ds{i}", False, 10 - i, 10 - i) for i in range(5)] + [("a", "", True, 1, 8)]
    got = _samples(families(Monitoring(running=running), 0.0, MetricsConfig(max_datasets=3)), "glidein_running_cores")
    datasets = {dict(k)["dataset"] for k in got}
    assert datasets == {"ds0", "ds1", "ds2", "other"}
    assert got[(("dataset", "other"), ("site", "a"), ("type", "single"))] == 6 + 7  # ds3 and ds4
    assert got[(("dataset", "other"), ("site", "a"), ("type", "multicore"))] == 8  # no dataset, not among the busiest


def test_pilot_cores_are_weighted_and_a_silent_client_is_down() -> None:
    snap = Monitoring(
        pilots=[PilotRow("a", "running", 2, 16, 4, 12.0), PilotRow("a", "pending", 3, 24, 0, 0.0)],
        sites=[SiteRow("a", 1000.0, 0.9, 0, 0.0, 2, 16.0, 5), SiteRow("b", 800.0, 1.0, 3, 60.0, 0, 0.0, 0)],
    )
    metrics = families(snap, 1000.0 + 30, MetricsConfig(client_dead_after_s=90))
    cores = _samples(metrics, "glidein_pilot_cores")
    assert cores[(("site", "a"), ("state", "allocated"))] == 16
    assert cores[(("site", "a"), ("state", "in_use"))] == 12
    assert cores[(("site", "a"), ("state", "idle"))] == 4
    assert cores[(("site", "a"), ("state", "pending"))] == 24
    assert _samples(metrics, "glidein_pilot_internal_efficiency") == {(("site", "a"),): 0.75}
    assert _samples(metrics, "glidein_site_client_up") == {(("site", "a"),): 1.0, (("site", "b"),): 0.0}
    assert _samples(metrics, "glidein_multicore_pressure")[(("site", "a"),)] == 5


async def test_the_job_counts_follow_the_jobs_and_are_rebuilt_after_metrics_were_off(tmp_path: Path) -> None:
    path = str(tmp_path / "g.db")

    async def counts(monitoring: bool, add: int = 0) -> dict[tuple[str, str, bool], int]:
        store = SqliteStore(path, monitoring=monitoring)
        await store.open()
        try:
            if add:
                ids = await store.add_jobs("ann", [JobSpec(argv=["true"], cpus=1 + i % 2) for i in range(add)], 1.0)
                await store.cancel_job(ids[0], 2.0)
            snap = await store.monitoring(3.0, "dataset", 0.0)
            return {(o, s, m): n for o, s, m, n in snap.jobs}
        finally:
            await store.close()

    first = {("ann", "idle", False): 2, ("ann", "idle", True): 2, ("ann", "cancelled", False): 1}
    assert await counts(True, add=5) == first
    now = {("ann", "idle", False): 2, ("ann", "idle", True): 3, ("ann", "cancelled", False): 2}
    assert await counts(False, add=2) == now  # kept without metrics too: the job list and summary read them
    assert await counts(True) == now
    db = sqlite3.connect(path)  # a database whose metrics were off before the counts were always kept
    db.executescript("DROP TRIGGER job_counts_update; DELETE FROM job_counts;")
    db.close()
    assert await counts(True) == now  # rebuilt from the jobs


def _exposition(*collectors: object) -> list[str]:
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(cast("Collector", c))
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_the_light_instruments_expose_what_the_library_s_own_instruments_do() -> None:
    buckets = (0.001, 0.01, 0.1, 1.0)
    observed = [0.0005, 0.001, 0.001, 0.05, 0.1, 0.7, 3.0, 12.5]  # bounds themselves fall in their bucket
    theirs = CollectorRegistry(auto_describe=False)
    histogram = Histogram("x_latency_seconds", "Doc.", buckets=buckets, registry=theirs)
    counter = Counter("x_bytes", "Doc.", ["direction"], registry=theirs)
    latency = Latency("x_latency_seconds", "Doc.", buckets)
    staged = ByteCounter("x_bytes", "Doc.", "direction", ("input", "output"))
    for v in observed:
        histogram.observe(v)
        latency.observe(v)
    for direction, n in (("input", 4096), ("output", 10), ("input", 1)):
        counter.labels(direction).inc(n)
        staged.add(direction, n)
    counter.labels("output")  # the library shows a child once used; ours shows every declared value

    class Both:
        def collect(self) -> Iterator[Metric]:
            yield latency.family()
            yield staged.family()

    assert _exposition(Both()) == [
        line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line
    ]
    assert 'x_latency_seconds_bucket{le="0.001"} 3.0' in _exposition(Both())
    with pytest.raises(KeyError):
        staged.add("job-42", 1)  # only the values the server declared: labels stay bounded
