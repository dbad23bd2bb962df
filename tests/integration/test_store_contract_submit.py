"""Bulk submit on every store backend: a batch's jobs, ids and labels, and every running aggregate it
feeds (idle jobs by shape, job counts, label counts), checked against the jobs themselves."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable

import asyncpg
import pytest

from glidein_client.wire.schema import JobSpec, JobState, PilotShape
from glidein_server.store.base import JobFilter, Store
from glidein_server.store.postgres import PostgresStore

NOW = 1_000_000.0
SITE_SHAPE = PilotShape(cpus=8, memory_mb=16_000, disk_mb=100_000, walltime_s=86_400)


def batch(n: int, salt: int = 0) -> list[JobSpec]:
    """Mixed shapes, site lists, labels (some jobs without any, one label value shared by many)."""
    out = []
    for i in range(n):
        k = i + salt
        labels = {} if k % 7 == 0 else {"ds": f"d{k % 3}", **({"type": "reco"} if k % 2 else {})}
        out.append(
            JobSpec(
                argv=["echo", str(k)],
                cpus=(1, 2, 4)[k % 3],
                memory_mb=1000 * (1 + k % 2),
                walltime_s=600,
                sites=["b", "a"] if k % 5 == 0 else None,
                labels=labels,
            )
        )
    return out


async def label_truth(store: Store, key: str, value: str) -> tuple[list[int], dict[str, int]]:
    jobs, _ = await store.list_jobs(JobFilter(limit=10_000))
    match = [j for j in jobs if j.spec.labels.get(key) == value]
    return sorted(j.id for j in match), dict(Counter(j.state.value for j in match))


async def test_a_batch_is_stored_in_order_and_counted_into_every_aggregate(store: Store) -> None:
    alice = batch(500)
    ids = await store.add_jobs("alice", alice, NOW)
    assert ids == list(range(ids[0], ids[0] + 500))
    bob = await store.add_jobs("bob", batch(40, salt=1), NOW)
    assert bob[0] > ids[-1] and len(bob) == 40
    page, counts = await store.list_jobs(JobFilter(owner="alice", limit=10_000))
    assert sorted(j.id for j in page) == ids and counts == {"idle": 500}
    by_id = {j.id: j for j in page}
    assert [by_id[i].spec for i in ids] == alice
    assert all(by_id[i].submitted_at == NOW and by_id[i].state is JobState.IDLE for i in ids)
    # Counts by owner, state and multicore (the metrics and the job list) and by label.
    snapshot = await store.monitoring(NOW, "ds", NOW)
    assert sorted(snapshot.jobs) == [
        ("alice", "idle", False, 167),
        ("alice", "idle", True, 333),
        ("bob", "idle", False, 13),
        ("bob", "idle", True, 27),
    ]
    for key, value in (("ds", "d0"), ("ds", "d2"), ("type", "reco"), ("type", "sim")):
        want_ids, want_counts = await label_truth(store, key, value)
        page, counts = await store.list_jobs(JobFilter(label=(key, value), limit=10_000))
        assert sorted(j.id for j in page) == want_ids and counts == want_counts, (key, value)
    # Idle jobs by shape: site "a" may run every job; site "c" not those that name sites "a" and "b".
    await store.report_site("a", SITE_SHAPE, NOW)
    await store.report_site("c", SITE_SHAPE, NOW)
    everything = alice + batch(40, salt=1)
    named = [s for s in everything if s.sites]
    demand_a = await store.site_demand("a", NOW, NOW - 60)
    demand_c = await store.site_demand("c", NOW, NOW - 60)
    assert demand_a.jobs + demand_c.jobs == pytest.approx(len(everything))
    assert demand_a.cpus + demand_c.cpus == pytest.approx(sum(s.cpus for s in everything))
    assert demand_a.jobs - demand_c.jobs == pytest.approx(len(named))


async def test_counts_stay_true_when_the_newest_jobs_were_purged_before_a_submit(store: Store) -> None:
    """Ids of purged jobs may be given again: the new jobs' labels and counts are theirs alone."""
    ids = await store.add_jobs("alice", batch(20), NOW)
    for job_id in ids[10:]:
        await store.cancel_job(job_id, NOW - 100)
    assert (await store.purge_finished(NOW, 100)).jobs == 10
    again = await store.add_jobs("alice", batch(20, salt=5), NOW)
    assert again[0] > ids[9] and len(set(again)) == 20
    for key, value in (("ds", "d1"), ("type", "reco")):
        want_ids, want_counts = await label_truth(store, key, value)
        page, counts = await store.list_jobs(JobFilter(label=(key, value), limit=10_000))
        assert sorted(j.id for j in page) == want_ids and counts == want_counts, (key, value)
    _, counts = await store.list_jobs(JobFilter(owner="alice"))
    assert counts == {"idle": 30}
    assert sorted((await store.monitoring(NOW, "ds", NOW)).jobs) == [
        ("alice", "idle", False, 11),
        ("alice", "idle", True, 19),
    ]


async def test_jobs_inserted_as_an_earlier_release_does_are_still_counted(postgres_url: str) -> None:
    """During a rolling upgrade a replica of the previous release inserts jobs with one statement and
    leaves the counting to the insert trigger: those jobs are counted and wake pilots as before."""
    store = PostgresStore(postgres_url)
    await store.open()
    woken: list[int] = []
    store.watch(lambda: woken.append(1))
    await store.listen()
    try:

        async def woken_by(submit: Awaitable[object]) -> bool:
            await asyncio.sleep(0.2)  # the listener's own wake-up on connecting has come
            woken.clear()
            await submit
            for _ in range(100):
                if woken:
                    return True
                await asyncio.sleep(0.05)
            return False

        con = await asyncpg.connect(postgres_url)
        try:
            assert await woken_by(
                con.execute(
                    "INSERT INTO jobs (owner, state, spec, cpus, memory_mb, gpus, disk_mb, walltime_s, sites, "
                    "priority, max_retries, submitted_at) SELECT 'bob', 'idle', $1::jsonb, 4, 1000, 0, 100, 600, '', "
                    "0, 0, $2 FROM generate_series(1, 3)",
                    '{"argv": ["true"], "cpus": 4, "memory_mb": 1000, "walltime_s": 600, "labels": {"ds": "d1"}}',
                    NOW,
                )
            ), "the trigger's NOTIFY reached the listening replica"
        finally:
            await con.close()
        ours = store.add_jobs("alice", batch(6), NOW)
        assert await woken_by(ours), "the submit's NOTIFY reached the listening replica"
        assert sorted((await store.monitoring(NOW, "ds", NOW)).jobs) == [
            ("alice", "idle", False, 2),
            ("alice", "idle", True, 4),
            ("bob", "idle", True, 3),
        ]
        want_ids, want_counts = await label_truth(store, "ds", "d1")
        page, counts = await store.list_jobs(JobFilter(label=("ds", "d1"), limit=10_000))
        assert sorted(j.id for j in page) == want_ids and counts == want_counts == {"idle": 5}
        await store.report_site("a", SITE_SHAPE, NOW)
        assert (await store.site_demand("a", NOW, NOW - 60)).jobs == 9
    finally:
        await store.close()
