"""Each user's cores in use, which a claim's fair share reads, are kept by the store as jobs change
state (on every backend): after claims, finishes, retries, requeues of lost attempts, cancels, holds,
releases, retries with more cores and purges they equal the cores of the user's claimed and running
jobs summed afresh, and an older database gains them when it is upgraded."""

from __future__ import annotations

import sqlite3

import asyncpg

from glidein_client.wire.schema import Finish, JobSpec, Outcome, PilotRegister, Resources, RetryRequest, SyncRequest
from glidein_server.store import postgres_base, sqlite_base
from glidein_server.store.base import JobAct, Store
from glidein_server.store.postgres import PostgresStore
from glidein_server.store.sqlite import SqliteStore

NOW = 1_000_000.0
LEASE_S = 600.0
FREE = Resources(cpus=8, memory_mb=64_000, disk_mb=100_000)
SUMMED = "SELECT owner, sum(cpus) FROM jobs WHERE state IN ('claimed', 'running') GROUP BY owner"


async def cores(store: Store, sql: str) -> dict[str, int]:
    if isinstance(store, SqliteStore):
        db = sqlite3.connect(store.path)
        try:
            return {owner: int(n) for owner, n in db.execute(sql)}
        finally:
            db.close()
    assert isinstance(store, PostgresStore)
    con = await asyncpg.connect(store.url)
    try:
        return {owner: int(n) for owner, n in await con.fetch(sql)}
    finally:
        await con.close()


async def kept(store: Store) -> dict[str, int]:
    """The cores in use as a claim reads them, checked against the jobs themselves."""
    q = sqlite_base.Q if isinstance(store, SqliteStore) else postgres_base.Q
    found = await cores(store, q["busy_cores"])
    assert found == await cores(store, SUMMED)
    return found


def spec(cpus: int, retries: int = 0) -> JobSpec:
    return JobSpec(argv=["true"], cpus=cpus, memory_mb=1000, walltime_s=600, max_retries=retries)


async def pilot(store: Store, site: str = "a") -> int:
    pid = await store.new_pilot(site, NOW)
    await store.register_pilot(pid, PilotRegister(resources=FREE, end_time=NOW + 86_400), NOW)
    return pid


async def test_the_cores_in_use_follow_every_change_of_state(store: Store) -> None:
    alice = await store.add_jobs("alice", [spec(1, retries=1)] * 4 + [spec(4)] * 2, NOW)
    bob = await store.add_jobs("bob", [spec(2)] * 3, NOW)
    assert await kept(store) == {}
    one, two = await pilot(store), await pilot(store)
    first = (await store.sync(one, SyncRequest(free=FREE, lifetime_s=80_000), NOW, LEASE_S)).jobs
    second = (await store.sync(two, SyncRequest(free=FREE, lifetime_s=80_000), NOW, LEASE_S)).jobs
    claimed = {c.job_id: c for c in first + second}
    busy = await kept(store)
    assert sum(busy.values()) == sum(4 if j in alice[4:] else 2 if j in bob else 1 for j in claimed)
    assert set(busy) == {"alice", "bob"}

    # One done, one failed with a retry left (idle again), on the first pilot.
    mine = [c for c in first if c.job_id in claimed]
    fins = [Finish(attempt_id=mine[0].attempt_id, lease=mine[0].lease, outcome=Outcome.DONE, exit_code=0)]
    if len(mine) > 1:
        fins.append(Finish(attempt_id=mine[1].attempt_id, lease=mine[1].lease, outcome=Outcome.FAILED, exit_code=1))
    await store.sync(one, SyncRequest(finished=fins, free=FREE, lifetime_s=80_000, claim=False), NOW + 1, LEASE_S)
    await kept(store)

    # A claimed job cancelled, another held; the pilots fall silent, so their attempts are lost and
    # their jobs idle again; then the held job is released, the cancelled one retried with more cores.
    left = [c.job_id for c in second]
    await store.cancel_job(left[0], NOW + 2)
    await kept(store)
    await store.hold_job(left[1], JobAct(by="alice", at=NOW + 2))
    await kept(store)
    await store.expire(NOW + 2 * LEASE_S, 60)
    assert await kept(store) == {}
    await store.release_job(left[1], JobAct(by="alice", at=NOW + 2000))
    await store.retry_job(left[0], JobAct(by="alice", at=NOW + 2000), RetryRequest(cpus=3))
    assert await kept(store) == {}
    three = await pilot(store, "b")
    while jobs := (await store.sync(three, SyncRequest(free=FREE, lifetime_s=80_000), NOW + 2000, LEASE_S)).jobs:
        assert await kept(store)
        done = [Finish(attempt_id=c.attempt_id, lease=c.lease, outcome=Outcome.DONE, exit_code=0) for c in jobs]
        await store.sync(three, SyncRequest(finished=done, free=FREE, lifetime_s=80_000, claim=False), NOW + 2001, 600)
    assert await kept(store) == {}
    assert (await store.purge_finished(NOW + 10_000, 100)).jobs == len(alice) + len(bob)
    assert await kept(store) == {}


async def test_an_older_database_gains_the_cores_in_use_when_upgraded(store: Store) -> None:
    await store.add_jobs("alice", [spec(4)] * 2 + [spec(1)] * 2, NOW)
    await store.add_jobs("bob", [spec(2)] * 2, NOW)
    one = await pilot(store)
    await store.sync(one, SyncRequest(free=FREE, lifetime_s=80_000), NOW, LEASE_S)
    before = await kept(store)
    assert sum(before.values()) == 8
    await store.close()
    if isinstance(store, SqliteStore):  # as before migration 12: counts without their cores
        db = sqlite3.connect(store.path)
        db.executescript(
            "DROP TRIGGER job_counts_update; DROP TRIGGER job_counts_delete;"
            "ALTER TABLE job_counts DROP COLUMN cores; UPDATE meta SET value = '11' WHERE key = 'schema_version';"
        )
        db.close()
    else:  # as before migration 17
        assert isinstance(store, PostgresStore)
        con = await asyncpg.connect(store.url)
        await con.execute(
            "ALTER TABLE job_count_deltas DROP COLUMN cores; UPDATE meta SET value = '16' WHERE key = 'schema_version'"
        )
        await con.close()
    await store.open()
    assert await kept(store) == before
    two = await pilot(store)  # the upgraded triggers count the cores of what happens next
    await store.sync(two, SyncRequest(free=FREE, lifetime_s=80_000), NOW + 1, LEASE_S)
    assert sum((await kept(store)).values()) == 14
