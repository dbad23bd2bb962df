"""A pilot's heartbeat (a sync that only reports: no start, finished attempt, held list or claim),
one contract for both stores (SQLite and a real PostgreSQL): it renews the pilot's leases once a
quarter is spent, tells the pilot which of its attempts to stop and whether its site drains, keeps
the pilot seen, records what it has free, and is refused once the pilot has ended."""

from __future__ import annotations

import asyncio

import pytest

from glidein_client.wire.errors import ConflictError
from glidein_client.wire.schema import (
    JobSpec,
    JobState,
    PilotRegister,
    Resources,
    SiteMode,
    SyncRequest,
    SyncResponse,
)
from glidein_server.store.base import Store
from glidein_server.store.postgres import PostgresStore

NOW = 1_000_000.0
LEASE_S = 60.0


def free(cpus: int) -> Resources:
    return Resources(cpus=cpus, memory_mb=16_000, disk_mb=100_000)


def beat(cpus: int = 0) -> SyncRequest:
    return SyncRequest(free=free(cpus), lifetime_s=80_000, claim=False)


async def pilot_with_a_job(store: Store) -> tuple[int, int, int]:
    """A running 1-core pilot of site ``a`` that claimed one new job at NOW: (pilot, job, attempt)."""
    [job_id] = await store.add_jobs("alice", [JobSpec(argv=["true"], memory_mb=1000, walltime_s=600)], NOW)
    pid = await store.new_pilot("a", NOW)
    await store.register_pilot(pid, PilotRegister(resources=free(1), end_time=NOW + 86_400), NOW)
    [claimed] = (await store.sync(pid, SyncRequest(free=free(1), lifetime_s=80_000), NOW, LEASE_S)).jobs
    assert claimed.job_id == job_id
    return pid, job_id, claimed.attempt_id


async def test_a_heartbeat_renews_leases_once_a_quarter_is_spent(store: Store) -> None:
    early, early_job, _ = await pilot_with_a_job(store)
    late, late_job, _ = await pilot_with_a_job(store)
    resp = await store.sync(early, beat(), NOW + 10, LEASE_S)  # 50 s of 60 left: not renewed
    assert (resp.jobs, resp.cancel, resp.refused, resp.leave) == ([], [], [], None)
    await store.sync(late, beat(), NOW + 20, LEASE_S)  # 40 s left: renewed until NOW + 80
    assert await store.expire(NOW + LEASE_S + 1, 10_000) == 1
    lost, kept = await store.get_job(early_job), await store.get_job(late_job)
    assert lost is not None and lost.state is JobState.IDLE
    assert kept is not None and kept.state is not JobState.IDLE
    assert await store.expire(NOW + 81, 10_000) == 1  # the renewed lease ends in its turn


async def test_a_heartbeat_tells_the_pilot_its_cancelled_jobs_and_its_sites_drain(store: Store) -> None:
    pid, job_id, attempt_id = await pilot_with_a_job(store)
    await store.cancel_job(job_id, NOW + 1)
    for _ in range(2):  # told on every heartbeat, until the pilot reports the attempt ended
        resp = await store.sync(pid, beat(), NOW + 2, LEASE_S)
        assert (resp.cancel, resp.leave, resp.jobs) == ([attempt_id], None, [])
    await store.set_site_mode("a", SiteMode.DRAINING)
    resp = await store.sync(pid, beat(), NOW + 3, LEASE_S)
    assert resp.leave is not None and "draining" in resp.leave
    await store.set_site_mode("a", SiteMode.PAUSED)
    assert (await store.sync(pid, beat(), NOW + 4, LEASE_S)).leave is None  # paused: the pilot may stay


async def test_a_heartbeat_keeps_the_pilot_seen_and_records_what_it_has_free(store: Store) -> None:
    seen, _, _ = await pilot_with_a_job(store)
    silent, _, _ = await pilot_with_a_job(store)
    await store.add_jobs("alice", [JobSpec(argv=["true"], memory_mb=1000, walltime_s=600)], NOW)
    await store.sync(seen, beat(0), NOW + 30, LEASE_S)
    assert (await store.claim_more(seen, 0, NOW + 30, LEASE_S)).jobs == []  # nothing free: nothing claimed
    await store.sync(seen, beat(1), NOW + 40, LEASE_S)
    assert len((await store.claim_more(seen, 0, NOW + 40, LEASE_S)).jobs) == 1  # a core free, as reported

    await store.expire(NOW + 45, 40)  # silent since NOW: ended; seen at NOW + 40: kept
    with pytest.raises(ConflictError, match="not running"):
        await store.sync(silent, beat(), NOW + 46, LEASE_S)
    assert (await store.sync(seen, beat(), NOW + 46, LEASE_S)).leave is None
    await store.pilot_exit(seen, "done", 1.0, 1, NOW + 47)
    with pytest.raises(ConflictError, match="not running"):
        await store.sync(seen, beat(), NOW + 48, LEASE_S)


async def test_heartbeats_arriving_together_are_each_answered_as_alone(store: Store) -> None:
    pilots = [pid for pid, _, _ in [await pilot_with_a_job(store) for _ in range(4)]]
    ended, _, _ = await pilot_with_a_job(store)
    cancelled, cancelled_job, cancelled_attempt = await pilot_with_a_job(store)
    await store.pilot_exit(ended, "done", 1.0, 0, NOW + 1)
    await store.cancel_job(cancelled_job, NOW + 1)
    # the first two run at once, the others wait and (on PostgreSQL) share the next statement
    order = [*pilots[:2], ended, cancelled, *pilots[2:], *pilots[:2]]  # the first two twice at once
    beats = [store.sync(pid, beat(i % 2), NOW + 20 + i, LEASE_S) for i, pid in enumerate(order)]
    results = await asyncio.gather(*beats, return_exceptions=True)
    assert isinstance(results[2], ConflictError) and "not running" in str(results[2])
    assert isinstance(results[3], SyncResponse) and results[3].cancel == [cancelled_attempt]
    rest = results[:2] + results[4:]
    assert all(isinstance(r, SyncResponse) and r.cancel == [] and r.leave is None for r in rest)
    if isinstance(store, PostgresStore):
        assert store.largest_heartbeat_batch == len(order) - 2
    # every running pilot's leases renewed from its own heartbeat, to NOW + 20 + i + 60: none lost yet
    assert await store.expire(NOW + 79, 10_000) == 0
    assert await store.expire(NOW + 110, 10_000) == 5
