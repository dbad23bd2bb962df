"""The running jobs kept per site and label, one contract for both stores (SQLite and a real PostgreSQL).

The summary's cores in use per site and the metrics' running jobs per site and dataset come from
counts kept as attempts begin and end (never a join of every running attempt to its job); they must
equal a count of the active attempts after claims, starts, ends, pilots leaving, lost leases,
holds, cancels and purges, and an upgrade must build them from the attempts already running.
"""

from __future__ import annotations

import sqlite3

import asyncpg

from glidein_client.wire.schema import (
    AttemptRef,
    Finish,
    JobSpec,
    Outcome,
    PilotRegister,
    PilotShape,
    Resources,
    SyncRequest,
)
from glidein_server.store.base import JobAct, JobFilter, Store
from glidein_server.store.postgres import PostgresStore
from glidein_server.store.sqlite import SqliteStore

NOW = 1_000_000.0
LEASE_S = 600.0


def job(i: int) -> JobSpec:
    labels = {"dataset": f"d{i % 3}", "kind": "sim"} if i % 4 else {"kind": "reco"}
    return JobSpec(argv=["true"], cpus=2 if i % 5 == 0 else 1, memory_mb=500, walltime_s=600, labels=labels)


async def pilot(store: Store, site: str) -> int:
    await store.report_site(site, PilotShape(cpus=4, memory_mb=8000, disk_mb=10_000, walltime_s=86_400), NOW)
    pid = await store.new_pilot(site, NOW)
    res = Resources(cpus=4, memory_mb=8000, disk_mb=10_000)
    await store.register_pilot(pid, PilotRegister(resources=res, end_time=NOW + 86_400), NOW)
    return pid


async def truth(store: Store) -> tuple[list[tuple[str, str, bool, int, int]], dict[str, int]]:
    """The running jobs per site, dataset and multicore, and the cores per site, counted from the attempts."""
    jobs, _ = await store.list_jobs(JobFilter(limit=10_000))
    running: dict[tuple[str, str, bool], list[int]] = {}
    cores: dict[str, int] = {}
    for j in jobs:
        for a in await store.attempts_of(j.id):
            if a.finished_at is None:
                key = (a.site, j.spec.labels.get("dataset", ""), j.spec.cpus > 1)
                running.setdefault(key, [0, 0])
                running[key][0] += 1
                running[key][1] += j.spec.cpus
                cores[a.site] = cores.get(a.site, 0) + j.spec.cpus
    return sorted((*k, n, c) for k, (n, c) in running.items()), cores


async def check(store: Store) -> None:
    want_running, want_cores = await truth(store)
    assert sorted((await store.monitoring(NOW, "dataset", NOW - 60)).running) == want_running
    got_cores = {s.name: s.cpus_in_use for s in (await store.summary(None)).sites if s.cpus_in_use}
    assert got_cores == want_cores


def sync(free: int, **kw: object) -> SyncRequest:
    return SyncRequest(free=Resources(cpus=free, memory_mb=8000, disk_mb=10_000), lifetime_s=80_000, **kw)  # type: ignore[arg-type]


async def test_running_counts_follow_every_attempt_that_begins_and_ends(store: Store) -> None:
    await store.add_jobs("alice", [job(i) for i in range(24)], NOW)
    a1, a2, b1 = await pilot(store, "a"), await pilot(store, "a"), await pilot(store, "b")
    claims = {p: (await store.sync(p, sync(4), NOW, LEASE_S)).jobs for p in (a1, a2, b1)}
    assert all(claims.values())
    await check(store)
    refs = [AttemptRef(attempt_id=c.attempt_id, lease=c.lease) for c in claims[a1]]
    await store.sync(a1, sync(0, started=refs, claim=False), NOW, LEASE_S)
    done = Finish(attempt_id=refs[0].attempt_id, lease=refs[0].lease, outcome=Outcome.DONE, wall_s=1.0)
    failed = Finish(attempt_id=refs[1].attempt_id, lease=refs[1].lease, outcome=Outcome.FAILED, exit_code=1)
    await store.sync(a1, sync(2, finished=[done, failed]), NOW, LEASE_S)  # ends two, claims more
    await check(store)
    await store.hold_job(claims[a2][0].job_id, JobAct(by="alice", at=NOW))
    await store.cancel_job(claims[a2][1].job_id, NOW)  # its attempt runs on until the pilot hears
    await check(store)
    await store.pilot_exit(b1, "idle", 0.5, 1, NOW)  # its claims go back to the queue
    await check(store)
    await store.expire(NOW + 2 * LEASE_S, 10_000)  # every lease ran out: all lost, the counts fold
    await check(store)
    assert (await store.monitoring(NOW, "dataset", NOW - 60)).running == []
    assert (await store.purge_finished(NOW + 10 * LEASE_S, 1000)).jobs
    await store.sync(a2, sync(4), NOW, LEASE_S)
    await check(store)


async def test_an_upgrade_counts_the_attempts_already_running(store: Store) -> None:
    await store.add_jobs("alice", [job(i) for i in range(12)], NOW)
    for site in ("a", "b"):
        assert (await store.sync(await pilot(store, site), sync(4), NOW, LEASE_S)).jobs
    want = await truth(store)
    await store.close()
    if isinstance(store, SqliteStore):
        db = sqlite3.connect(store.path)
        db.executescript(
            "DROP TRIGGER active_jobs_begin; DROP TRIGGER active_jobs_end; DROP TRIGGER active_jobs_delete;"
            "DROP TABLE active_jobs; UPDATE meta SET value = '7' WHERE key = 'schema_version';"
        )
        db.close()
    else:
        assert isinstance(store, PostgresStore)
        con = await asyncpg.connect(store.url)
        await con.execute(
            "DROP TABLE active_job_deltas; DROP TRIGGER attempts_began ON attempts;"
            "DROP TRIGGER attempt_ended ON attempts; DROP TRIGGER attempts_deleted ON attempts;"
            "DROP FUNCTION glidein_attempts_began(); DROP FUNCTION glidein_attempt_ended();"
            "DROP FUNCTION glidein_attempts_deleted(); UPDATE meta SET value = '12' WHERE key = 'schema_version'"
        )
        await con.close()
    await store.open()
    assert await truth(store) == want and want[0]
    await check(store)
    await store.expire(NOW + 2 * LEASE_S, 10_000)
    await check(store)
