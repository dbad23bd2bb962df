"""Pilots syncing at the same moment, on every store backend: each gets only jobs that fit it and
its site, the site's cap holds for all of them together, and a sync that is refused or fails does
so alone. (The PostgreSQL store runs such syncs in one transaction and claims for them together;
SQLite runs calls that wait together as one batch.)"""

from __future__ import annotations

import asyncio

import pytest

from glidein_client.wire.errors import ConflictError
from glidein_client.wire.schema import JobSpec, JobState, PilotRegister, PilotShape, Resources, SyncRequest
from glidein_server.store import postgres_claims
from glidein_server.store.base import JobFilter, Store
from glidein_server.store.postgres import PostgresStore

NOW = 1_000_000.0
LEASE_S = 600.0
SHAPE = PilotShape(cpus=8, memory_mb=16_000, disk_mb=100_000, walltime_s=86_400)


def job(**kw: object) -> JobSpec:
    return JobSpec(argv=["true"], memory_mb=1000, walltime_s=600, **kw)  # type: ignore[arg-type]


def ask(cpus: int, **kw: object) -> SyncRequest:
    return SyncRequest(free=Resources(cpus=cpus, memory_mb=16_000, disk_mb=100_000), lifetime_s=80_000, **kw)  # type: ignore[arg-type]


async def pilot(store: Store, site: str, cpus: int) -> int:
    pid = await store.new_pilot(site, NOW)
    res = Resources(cpus=cpus, memory_mb=16_000, disk_mb=100_000)
    await store.register_pilot(pid, PilotRegister(resources=res, end_time=NOW + 86_400), NOW)
    return pid


async def test_pilots_claiming_together_get_their_sites_jobs_within_the_sites_cap(store: Store) -> None:
    for site in ("a", "b"):
        await store.report_site(site, SHAPE, NOW)
    await store.set_site_cap("a", 5)
    a_jobs = set(await store.add_jobs("alice", [job(sites=["a"]) for _ in range(10)], NOW))
    b_jobs = set(await store.add_jobs("bob", [job(sites=["b"], cpus=2) for _ in range(10)], NOW))
    big = set(await store.add_jobs("carol", [job(cpus=4) for _ in range(3)], NOW))  # fits the 4-core pilots only
    at_a = [await pilot(store, "a", 2) for _ in range(6)]
    at_b = [await pilot(store, "b", 4) for _ in range(6)]
    pilots = at_a + at_b
    responses = await asyncio.gather(*(store.sync(p, ask(2 if p in at_a else 4), NOW, LEASE_S) for p in pilots))
    got = {p: r.jobs for p, r in zip(pilots, responses, strict=True)}
    everything = [c.job_id for cs in got.values() for c in cs]
    assert len(everything) == len(set(everything))  # no job twice
    a_claimed = [c for p in at_a for c in got[p]]
    assert {c.job_id for c in a_claimed} <= a_jobs  # b's jobs and the big ones never go to a
    assert sum(c.spec.cpus for c in a_claimed) == 5  # the cap, for all of a's pilots together
    for p in at_b:
        assert {c.job_id for c in got[p]} <= b_jobs | big
        assert sum(c.spec.cpus for c in got[p]) <= 4
    assert {c.job_id for p in at_b for c in got[p]} >= big  # the big ones first: more cores
    assert sum(len(got[p]) for p in at_b) == 3 + 6  # 24 cores: three 4-core jobs, six 2-core ones


async def test_a_sync_refused_or_failing_among_others_does_so_alone(store: Store) -> None:
    ids = await store.add_jobs("alice", [job() for _ in range(20)], NOW)
    pilots = [await pilot(store, "a", 2) for _ in range(8)]
    ended = await pilot(store, "a", 2)
    await store.pilot_states("a", {ended: "failed"}, NOW)
    broken = await pilot(store, "a", 2)
    unstorable = ask(2, seq=2**70)  # a sync number no database column holds
    calls = [store.sync(p, ask(2), NOW, LEASE_S) for p in pilots]
    calls += [store.sync(ended, ask(2), NOW, LEASE_S), store.sync(broken, unstorable, NOW, LEASE_S)]
    *fine, refused, failed = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(refused, ConflictError) and "not running" in refused.message
    assert isinstance(failed, Exception) and not isinstance(failed, ConflictError)
    claimed = [c.job_id for r in fine if not isinstance(r, BaseException) for c in r.jobs]
    assert len(fine) == 8 and not any(isinstance(r, BaseException) for r in fine)
    assert len(claimed) == len(set(claimed)) == 16
    idle, _ = await store.list_jobs(JobFilter(owner="alice", state=JobState.IDLE))
    assert sorted(j.id for j in idle) == sorted(set(ids) - set(claimed))  # the failed sync claimed nothing
    again = await store.sync(broken, ask(2, seq=1), NOW, LEASE_S)
    assert len(again.jobs) == 2


async def test_postgres_claims_pilots_syncing_together_in_few_transactions(postgres_url: str) -> None:
    """The point of claiming together: sixteen pilots' claims do not take sixteen transactions."""
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        await store.add_jobs("alice", [job() for _ in range(32)], NOW)
        pilots = [await pilot(store, "a", 2) for _ in range(16)]
        responses = await asyncio.gather(*(store.sync(p, ask(2), NOW, LEASE_S) for p in pilots))
        assert sorted(len(r.jobs) for r in responses) == [2] * 16
        transactions = await store.pool.fetchval("SELECT count(DISTINCT xmin::text) FROM attempts")
        assert transactions < 8
    finally:
        await store.close()


async def test_postgres_claims_many_jobs_in_statements_of_a_bounded_size(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_claims, "CLAIM_ROWS", 3)  # 11 jobs: statements of 3, 3, 3 and 2 (padded to 2)
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        ids = await store.add_jobs("alice", [job() for _ in range(11)], NOW)
        one = await pilot(store, "a", 8)
        other = await pilot(store, "a", 8)
        first, second = await asyncio.gather(
            store.sync(one, ask(8), NOW, LEASE_S), store.sync(other, ask(3), NOW, LEASE_S)
        )
        claimed = [c.job_id for c in first.jobs + second.jobs]
        assert sorted(claimed) == ids and len(first.jobs) == 8 and len(second.jobs) == 3
        assert len({c.attempt_id for c in first.jobs + second.jobs}) == 11
    finally:
        await store.close()


async def test_waiting_pilots_woken_together_share_the_new_work(store: Store) -> None:
    """A submit wakes every waiting pilot at once: each claims what fits what it has free, no job twice."""
    pilots = [await pilot(store, "a", 2) for _ in range(10)]
    ids = await store.add_jobs("alice", [job() for _ in range(15)], NOW)
    got = await asyncio.gather(*(store.claim_more(p, 0, NOW, LEASE_S) for p in pilots))
    claimed = [c.job_id for r in got for c in r.jobs]
    assert sorted(claimed) == ids  # 20 free cores for 15 one-core jobs
    assert all(len(r.jobs) <= 2 for r in got)
