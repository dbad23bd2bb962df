"""Bounded reservations, one contract for both stores (SQLite and a real PostgreSQL).

A 4-core job waits while single-core jobs keep arriving. Without a reservation, every core that
frees is refilled at once by a single-core job and the 4-core job starves; with one, the pilot
that holds for it lets its cores drain until the job fits, then claims it. A hold ends when its
job is claimed, when its pilot ends, or after ``max_hold_s``; one pilot holds for a job, and two
claimers at once (two replicas on PostgreSQL) never both hold for it; one owner's jobs get at most
``max_per_owner`` holds, whatever their shapes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from glidein_client.wire.schema import (
    AttemptRef,
    ClaimedJob,
    Finish,
    JobSpec,
    JobState,
    Outcome,
    PilotRegister,
    Resources,
    SyncRequest,
)
from glidein_server.policy.reservation import ReservationPolicy
from glidein_server.store.base import Store
from glidein_server.store.postgres import PostgresStore
from glidein_server.store.reservations import DEFAULT_POLICY
from glidein_server.store.sqlite import SqliteStore

NOW = 1_000_000.0
LEASE_S = 3600.0
TICK_S = 600.0  # one single-core job ends and another arrives this often
POLICY = ReservationPolicy(after_s=1800.0, max_hold_s=3600.0)
LIFETIME_S = 80_000.0

AnyStore = SqliteStore | PostgresStore
Opener = Callable[[ReservationPolicy | None], Awaitable[AnyStore]]


@pytest.fixture(params=["sqlite", "postgres"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[AnyStore] = []

    async def open_store(policy: ReservationPolicy | None) -> AnyStore:
        s: AnyStore
        if request.param == "sqlite":
            s = SqliteStore(str(tmp_path / "glidein.db"), reservation=policy)
        else:
            s = PostgresStore(request.getfixturevalue("postgres_url"), reservation=policy)
        await s.open()
        opened.append(s)
        return s

    yield open_store
    for s in opened:
        await s.close()


def single() -> JobSpec:
    return JobSpec(argv=["true"], memory_mb=1000, walltime_s=3600)


def four() -> JobSpec:
    return JobSpec(argv=["true"], cpus=4, memory_mb=1000, walltime_s=3600)


async def pilot(store: AnyStore, cpus: int = 4) -> int:
    pid = await store.new_pilot("a", NOW)
    res = Resources(cpus=cpus, memory_mb=16_000, disk_mb=100_000)
    await store.register_pilot(pid, PilotRegister(resources=res, end_time=NOW + 86_400), NOW)
    return pid


def free(cpus: int) -> Resources:
    return Resources(cpus=cpus, memory_mb=16_000, disk_mb=100_000)


async def claim(store: AnyStore, pid: int, cpus_free: int, at: float, **kw: object) -> list[ClaimedJob]:
    req = SyncRequest(free=free(cpus_free), lifetime_s=LIFETIME_S, **kw)  # type: ignore[arg-type]
    return (await store.sync(pid, req, at, LEASE_S)).jobs


async def stream(store: AnyStore, ticks: int) -> tuple[int, int, list[list[int]]]:
    """A 4-core pilot running four single-core jobs; a 4-core job arrives; then every tick the pilot's
    oldest job ends, a single-core job arrives and the pilot claims with the cores it has free.
    Returns the pilot, the 4-core job and, per tick, the jobs claimed."""
    await store.add_jobs("alice", [single() for _ in range(4)], NOW)
    pid = await pilot(store)
    running = await claim(store, pid, 4, NOW)
    assert len(running) == 4
    [big] = await store.add_jobs("alice", [four()], NOW + 1)
    free_cpus = 0
    claimed: list[list[int]] = []
    for tick in range(1, ticks + 1):
        at = NOW + tick * TICK_S
        await store.add_jobs("alice", [single()], at)
        done = running.pop(0)
        fin = Finish(attempt_id=done.attempt_id, lease=done.lease, outcome=Outcome.DONE, exit_code=0)
        started = [AttemptRef(attempt_id=c.attempt_id, lease=c.lease) for c in running]
        got = await claim(store, pid, free_cpus + 1, at, finished=[fin], started=started)
        running += got
        free_cpus = free_cpus + 1 - sum(c.spec.cpus for c in got)
        claimed.append([c.job_id for c in got])
        if big in claimed[-1]:
            break
    return pid, big, claimed


async def test_without_a_reservation_single_core_jobs_starve_the_multicore_job(opener: Opener) -> None:
    store = await opener(None)
    _, big, claimed = await stream(store, ticks=8)  # 80 min, well past after_s
    assert all(len(got) == 1 and got != [big] for got in claimed)  # every freed core refilled at once
    assert (await store.get_job(big)).state is JobState.IDLE  # type: ignore[union-attr]
    assert await store.reservations(NOW + 8 * TICK_S) == []


async def test_the_reserving_pilot_drains_until_the_multicore_job_fits_and_claims_it(opener: Opener) -> None:
    store = await opener(POLICY)
    pid, big, claimed = await stream(store, ticks=12)
    # Ticks 1-3: not waiting after_s yet, refilled as before; tick 4 (40 min): the hold begins and
    # the pilot takes nothing; ticks 5-6: still too few cores; tick 7: four free, the 4-core job.
    assert [len(got) for got in claimed[:3]] == [1, 1, 1]
    assert claimed[3:] == [[], [], [], [big]]
    view = await store.get_job(big)
    assert view is not None and view.state is JobState.CLAIMED
    [attempt] = await store.attempts_of(big)
    assert attempt.pilot_id == pid
    assert await store.reservations(NOW + 7 * TICK_S) == []  # claimed: the hold is over


async def test_a_hold_is_one_pilots_and_others_keep_filling_their_cores(opener: Opener) -> None:
    store = await opener(POLICY)
    await store.add_jobs("alice", [single() for _ in range(20)], NOW)
    [big] = await store.add_jobs("alice", [four()], NOW)
    first, second = await pilot(store), await pilot(store)
    at = NOW + POLICY.after_s + 1
    assert await claim(store, first, 1, at) == []  # the hold begins: nothing that would take its core
    assert await store.reservations(at) == [(first, big, at)]
    assert len(await claim(store, second, 1, at + 1)) == 1  # the job is held for: the second fills its core
    assert await store.reservations(at + 1) == [(first, big, at)]
    assert await claim(store, first, 3, at + 2) == []
    assert [c.job_id for c in await claim(store, first, 4, at + 3)] == [big]


async def test_a_hold_ends_with_its_pilot(opener: Opener) -> None:
    store = await opener(POLICY)
    await store.add_jobs("alice", [single() for _ in range(20)], NOW)
    [big] = await store.add_jobs("alice", [four()], NOW)
    first, second = await pilot(store), await pilot(store)
    at = NOW + POLICY.after_s
    assert await claim(store, first, 1, at) == []
    await store.pilot_exit(first, "walltime reached", 0.5, 0, at + 1)
    assert await store.reservations(at + 1) == []
    assert await claim(store, second, 2, at + 2) == []  # the starving job gets another pilot at once
    assert await store.reservations(at + 2) == [(second, big, at + 2)]
    # A pilot the batch system reports gone (lost) lets go too.
    assert await store.pilot_states("a", {second: "failed"}, at + 3) == 1
    assert await store.reservations(at + 3) == []


async def test_a_hold_runs_out_after_max_hold_and_the_pilot_rests_as_long(opener: Opener) -> None:
    store = await opener(POLICY)
    await store.add_jobs("alice", [single() for _ in range(20)], NOW)
    [big] = await store.add_jobs("alice", [four()], NOW)
    first, second = await pilot(store), await pilot(store)
    at = NOW + POLICY.after_s
    assert await claim(store, first, 1, at) == []
    assert await claim(store, first, 1, at + POLICY.max_hold_s) == []  # still within max_hold_s
    assert await store.reservations(at + POLICY.max_hold_s) == [(first, big, at)]
    later = at + POLICY.max_hold_s + 1
    assert await store.reservations(later) == []  # ran out, for everyone, before its pilot comes back
    assert len(await claim(store, first, 1, later)) == 1  # it lets go and fills its core again
    assert len(await claim(store, first, 1, later + 60)) == 1  # ... and rests: no new hold yet
    assert await claim(store, second, 1, later + 120) == []  # another pilot may hold for the job
    assert await store.reservations(later + 120) == [(second, big, later + 120)]


async def test_a_running_out_hold_is_taken_over_before_its_pilot_comes_back(opener: Opener) -> None:
    store = await opener(POLICY)
    await store.add_jobs("alice", [single() for _ in range(20)], NOW)
    [big] = await store.add_jobs("alice", [four()], NOW)
    first, second = await pilot(store), await pilot(store)
    at = NOW + POLICY.after_s
    assert await claim(store, first, 1, at) == []
    later = at + POLICY.max_hold_s + 1
    assert await claim(store, second, 1, later) == []
    assert await store.reservations(later) == [(second, big, later)]
    assert len(await claim(store, first, 1, later + 1)) == 1  # the first, back, holds nothing and rests


async def test_reservations_off_and_young_jobs_hold_nothing(opener: Opener) -> None:
    store = await opener(POLICY)
    await store.add_jobs("alice", [single() for _ in range(4)], NOW)
    await store.add_jobs("alice", [four()], NOW)
    pid = await pilot(store)
    assert len(await claim(store, pid, 1, NOW + POLICY.after_s - 1)) == 1  # not waiting long enough yet
    small = await pilot(store, cpus=2)
    assert len(await claim(store, small, 1, NOW + POLICY.after_s + 1)) == 1  # a 2-core pilot cannot run it
    assert await store.reservations(NOW + POLICY.after_s + 1) == []


async def test_concurrent_claimers_never_both_reserve_one_job(opener: Opener) -> None:
    """Ten pilots, each with one core free, claim at once, round after round, while two 4-core jobs
    starve: a pilot that took nothing is one that holds, and no job has two (on PostgreSQL two
    stores on one database, as two server replicas, each claim its own transaction)."""
    store = await opener(POLICY)
    replicas: list[AnyStore] = [store, await opener(POLICY)] if isinstance(store, PostgresStore) else [store]
    # Enough single-core jobs that no claimer finds every candidate locked by the others.
    await store.add_jobs("alice", [single() for _ in range(300)], NOW)
    bigs = await store.add_jobs("alice", [four() for _ in range(2)], NOW)
    pilots = [await pilot(store) for _ in range(10)]
    holders: set[int] = set()
    for round_ in range(4):
        at = NOW + POLICY.after_s + round_
        got = await asyncio.gather(*(claim(replicas[i % len(replicas)], p, 1, at) for i, p in enumerate(pilots)))
        assert all(len(jobs) <= 1 and bigs[0] not in jobs for jobs in got)
        holders |= {p for p, jobs in zip(pilots, got, strict=True) if not jobs}
        holds = await store.reservations(at)
        assert sorted(p for p, _, _ in holds) == sorted(holders)  # each that held back holds, alone
        assert len({job for _, job, _ in holds}) == len(holds)
    assert sorted(job for _, job, _ in holds) == bigs


async def test_claims_skip_the_read_until_a_job_may_starve_and_then_hold(opener: Opener) -> None:
    """Claims look at reservations only when a hold is in force or a multicore job may have waited
    long enough (checked every few seconds); a job that arrives meanwhile is still held for in time."""
    store = await opener(POLICY)
    await store.add_jobs("alice", [single() for _ in range(20)], NOW)
    pid = await pilot(store)
    assert len(await claim(store, pid, 1, NOW)) == 1  # no multicore job: the gate closes
    [big] = await store.add_jobs("alice", [four()], NOW + 5)
    assert len(await claim(store, pid, 1, NOW + 10)) == 1
    at = NOW + 5 + POLICY.after_s
    assert await claim(store, pid, 1, at) == []  # the gate looked again and the job waited long enough
    assert await store.reservations(at) == [(pid, big, at)]
    assert await claim(store, pid, 1, at + 1) == []  # a hold in force keeps the gate open


async def test_one_owners_many_shapes_hold_at_most_the_per_owner_limit(store: Store) -> None:
    """Mallory submits large jobs of six shapes (the limit of 4 holds per shape never binds), then
    Bob one: with the server's default policy (on ``store``: SQLite, then PostgreSQL), at most 4
    pilots hold for Mallory's jobs, the next holds for Bob's, which it then runs, and the last fills
    its core. Without the limit per owner, Mallory's jobs take every pilot that holds."""
    assert isinstance(store, SqliteStore | PostgresStore)
    assert store.reservation == DEFAULT_POLICY and DEFAULT_POLICY.max_per_owner == 4
    await store.add_jobs("alice", [single() for _ in range(20)], NOW)
    hers = await store.add_jobs("mallory", [four_of(1000 + i) for i in range(6)], NOW)
    [his] = await store.add_jobs("bob", [four()], NOW + 1)
    pilots = [await pilot(store) for _ in range(6)]
    at = NOW + DEFAULT_POLICY.after_s + 10
    got = [await claim(store, p, 1, at + i) for i, p in enumerate(pilots)]
    assert got[:5] == [[]] * 5 and len(got[5]) == 1  # five hold; the sixth finds no one it may hold for
    holds = {job: p for p, job, _ in await store.reservations(at + 6)}
    assert sorted(holds) == [*hers[:4], his] and holds[his] == pilots[4]
    assert [c.job_id for c in await claim(store, pilots[4], 4, at + 7)] == [his]  # Bob's job runs

    store.reservation = replace(DEFAULT_POLICY, max_per_owner=0)  # no limit per owner
    late = await pilot(store)
    assert await claim(store, late, 1, at + 8) == []
    assert (late, hers[4]) in {(p, job) for p, job, _ in await store.reservations(at + 8)}


def four_of(memory_mb: int) -> JobSpec:
    return JobSpec(argv=["true"], cpus=4, memory_mb=memory_mb, walltime_s=3600)
