"""One contract for every Store backend: the same tests on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from glidein_client.wire.errors import ConflictError, NotFoundError, ValidationError
from glidein_client.wire.schema import (
    AttemptRef,
    Finish,
    InputFile,
    JobSpec,
    JobState,
    Outcome,
    OutputFile,
    PilotRegister,
    PilotShape,
    Provenance,
    Resources,
    Role,
    Scope,
    SiteMode,
    SyncRequest,
)
from glidein_client.wire.staging import Network
from glidein_server.policy.fairshare import Shares
from glidein_server.policy.retry import RetryPolicy
from glidein_server.store.base import JobAct, JobFilter, Principal, Purged, Store
from glidein_server.store.postgres import PostgresStore
from glidein_server.store.sqlite import SqliteStore

NOW = 1_000_000.0
LEASE_S = 60.0
SHA = "a" * 64
SHAPE = PilotShape(cpus=8, memory_mb=16_000, disk_mb=100_000, walltime_s=86_400)
POLICY = RetryPolicy(memory_factor=2.0, max_memory_mb=8000, resize_retries=1)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store
    if request.param == "sqlite":
        s = SqliteStore(str(tmp_path / "glidein.db"), retry=POLICY)
    else:
        s = PostgresStore(request.getfixturevalue("postgres_url"), retry=POLICY)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def job(**kw: object) -> JobSpec:
    return JobSpec(argv=["true"], memory_mb=1000, walltime_s=600, **kw)  # type: ignore[arg-type]


async def running_pilot(store: Store, site: str = "a", cpus: int = 8) -> int:
    pid = await store.new_pilot(site, NOW)
    res = Resources(cpus=cpus, memory_mb=16_000, disk_mb=100_000)
    await store.register_pilot(pid, PilotRegister(resources=res, end_time=NOW + 86_400), NOW)
    return pid


def free(cpus: int = 8) -> Resources:
    return Resources(cpus=cpus, memory_mb=16_000, disk_mb=100_000)


async def test_tokens(store: Store) -> None:
    tid = await store.add_token("h" * 64, Role.USER, "alice", NOW + 100, [Scope.READ])
    p = await store.lookup_token("h" * 64, NOW)
    assert p is not None and (p.role, p.subject, p.token_id, p.scopes) == (
        Role.USER,
        "alice",
        tid,
        frozenset({Scope.READ}),
    )
    assert [t.id for t in await store.list_tokens(Role.USER, "alice")] == [tid]
    await store.renew_token(tid, NOW + 500)
    assert (await store.list_tokens(None, None))[0].expires_at == NOW + 500
    assert await store.revoke_token(tid, NOW) == [tid]
    assert await store.revoke_token(tid, NOW) == []
    assert await store.lookup_token("h" * 64, NOW) is None
    assert await store.list_tokens(Role.USER, None) == []
    assert len(await store.list_tokens(Role.USER, None, revoked=True)) == 1
    assert await store.purge_tokens(NOW + 1) == 1
    await store.set_totp("operator", b"secret", NOW)
    assert await store.get_totp("operator") == b"secret"
    assert await store.use_totp_step("operator", 5)
    assert not await store.use_totp_step("operator", 5)
    assert not await store.use_totp_step("operator", 4)
    assert await store.use_totp_step("operator", 6)


async def test_revoking_a_site_revokes_its_pilots(store: Store) -> None:
    pid = await store.new_pilot("a", NOW)
    await store.add_token("s" * 64, Role.SITE, "a", None)
    await store.add_token("p" * 64, Role.PILOT, str(pid), NOW + 100)
    assert len(await store.revoke_subject(Role.SITE, "a", NOW)) == 2
    assert await store.lookup_token("p" * 64, NOW) is None


async def test_jobs_list_filter_cancel_retry(store: Store) -> None:
    ids = await store.add_jobs("alice", [job(labels={"ds": "x"}), job(), job(labels={"ds": "y"})], NOW)
    assert len(ids) == 3 and ids == sorted(ids)
    bob = await store.add_jobs("bob", [job()], NOW)
    page, counts = await store.list_jobs(JobFilter(owner="alice"))
    assert [j.id for j in page] == ids and counts == {"idle": 3}
    page, _ = await store.list_jobs(JobFilter(label=("ds", "y")))
    assert [j.id for j in page] == [ids[2]]
    page, _ = await store.list_jobs(JobFilter(ids=(ids[1], bob[0])))
    assert [j.id for j in page] == [ids[1], bob[0]]
    cancelled = await store.cancel_job(ids[0], NOW)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished_at == NOW
    page, counts = await store.list_jobs(JobFilter(owner="alice", state="idle", limit=1, offset=1))
    assert [j.id for j in page] == [ids[2]] and counts == {"idle": 2, "cancelled": 1}
    with pytest.raises(ConflictError):
        await store.retry_job(ids[1])
    assert (await store.retry_job(ids[0])).state is JobState.IDLE
    with pytest.raises(NotFoundError):
        await store.cancel_job(999_999, NOW)
    assert await store.get_job(999_999) is None
    summary = await store.summary("alice")
    assert summary.jobs == {"idle": 3}


async def test_a_state_other_than_idle_lists_its_jobs_in_id_order_with_the_other_filters(store: Store) -> None:
    """Held and cancelled jobs among idle ones, by state alone, with an owner, a label, keyset and
    newest first; idle still lists every idle job."""
    ids = await store.add_jobs("alice", [job(labels={"ds": "x" if i % 2 else "y"}) for i in range(8)], NOW)
    bob = await store.add_jobs("bob", [job(labels={"ds": "x"})], NOW)
    for i in (1, 2, 5):
        await store.hold_job(ids[i], JobAct(by="alice", at=NOW))
    await store.hold_job(bob[0], JobAct(by="bob", at=NOW))
    await store.cancel_job(ids[6], NOW)
    held = [ids[1], ids[2], ids[5], bob[0]]
    assert [j.id for j in (await store.list_jobs(JobFilter(state="held")))[0]] == held
    assert [j.id for j in (await store.list_jobs(JobFilter(state="held", owner="alice")))[0]] == held[:3]
    assert [j.id for j in (await store.list_jobs(JobFilter(state="held", label=("ds", "x"))))[0]] == [
        ids[1],
        ids[5],
        bob[0],
    ]
    assert [j.id for j in (await store.list_jobs(JobFilter(state="held", after=ids[2])))[0]] == held[2:]
    newest = JobFilter(state="held", newest_first=True, limit=2)
    assert [j.id for j in (await store.list_jobs(newest))[0]] == held[:1:-1]
    assert [j.id for j in (await store.list_jobs(JobFilter(state="cancelled")))[0]] == [ids[6]]
    assert (await store.list_jobs(JobFilter(state="failed")))[0] == []
    idle = [ids[0], ids[3], ids[4], ids[7]]
    assert [j.id for j in (await store.list_jobs(JobFilter(state="idle")))[0]] == idle


async def test_label_filters_page_in_id_order_with_the_other_filters(store: Store) -> None:
    """Several labels (the rarer one walked first), with owner, state, ids, limit and offset."""
    ids = await store.add_jobs(
        "alice", [job(labels={"ds": "x", "t": "sim" if i % 2 else "reco"}) for i in range(6)], NOW
    )
    bob = await store.add_jobs("bob", [job(labels={"ds": "x", "t": "sim"})], NOW)
    await store.cancel_job(ids[1], NOW)
    sims = [ids[1], ids[3], ids[5], bob[0]]
    page, counts = await store.list_jobs(JobFilter(label=("ds", "x"), labels=(("t", "sim"),), limit=2, offset=1))
    assert [j.id for j in page] == sims[1:3] and counts == {"cancelled": 1, "idle": 3}
    page, counts = await store.list_jobs(JobFilter(owner="alice", label=("t", "sim"), state="idle"))
    assert [j.id for j in page] == [ids[3], ids[5]] and counts == {"cancelled": 1, "idle": 2}
    page, counts = await store.list_jobs(JobFilter(label=("ds", "x"), ids=(ids[0], bob[0], 999_999)))
    assert [j.id for j in page] == [ids[0], bob[0]] and counts == {"idle": 2}
    page, counts = await store.list_jobs(JobFilter(label=("ds", "x"), labels=(("ds", "y"),)))
    assert page == [] and counts == {}
    page, counts = await store.list_jobs(JobFilter(label=("t", "none")))
    assert page == [] and counts == {}


async def test_counts_and_label_filters_follow_every_change_of_state(store: Store) -> None:
    """The job list's counts and the summary come from running aggregates: they match a count of the jobs."""
    a = await store.add_jobs("alice", [job(labels={"ds": "x", "t": "sim"}), job(labels={"ds": "x"}), job()], NOW)
    b = await store.add_jobs("bob", [job(labels={"ds": "x", "t": "sim"}), job(cpus=2, labels={"ds": "y"})], NOW)
    pid = await running_pilot(store)
    assert (await store.sync(pid, SyncRequest(free=free(2), lifetime_s=80_000), NOW, LEASE_S)).jobs
    await store.cancel_job(a[0], NOW)

    async def truth(flt: JobFilter) -> dict[str, int]:
        page, _ = await store.list_jobs(JobFilter(owner=flt.owner, ids=flt.ids, limit=10_000))
        want = {j.id for j in page if all(j.spec.labels.get(k) == v for k, v in flt.all_labels)}
        out: dict[str, int] = {}
        for j in page:
            if j.id in want:
                out[j.state.value] = out.get(j.state.value, 0) + 1
        return out

    for flt in (
        JobFilter(),
        JobFilter(owner="alice"),
        JobFilter(owner="bob"),
        JobFilter(label=("ds", "x")),
        JobFilter(label=("ds", "x"), labels=(("t", "sim"),)),
        JobFilter(owner="alice", label=("ds", "x")),
    ):
        page, counts = await store.list_jobs(flt)
        assert counts == await truth(flt), flt
        assert sum(counts.values()) == len(page)
    page, _ = await store.list_jobs(JobFilter(label=("ds", "x"), labels=(("t", "sim"),)))
    assert [j.id for j in page] == [a[0], b[0]]
    assert (await store.summary(None)).jobs == await truth(JobFilter())
    assert (await store.summary("bob")).jobs == await truth(JobFilter(owner="bob"))
    assert (await store.purge_finished(NOW + 10, 100)).jobs == 1  # the cancelled job leaves its labels too
    page, counts = await store.list_jobs(JobFilter(label=("t", "sim")))
    assert [j.id for j in page] == [b[0]] and sum(counts.values()) == 1
    assert (await store.summary("alice")).jobs == await truth(JobFilter(owner="alice"))
    assert sum((await store.summary("alice")).jobs.values()) == 2


async def test_claim_run_and_finish_with_outputs(store: Store) -> None:
    [jid] = await store.add_jobs("alice", [job(cpus=2, outputs=["out.txt"])], NOW)
    await store.report_site("a", SHAPE, NOW)
    assert (await store.site_demand("a", NOW, NOW - 60)).jobs == 1
    pid = await running_pilot(store)
    resp = await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)
    [claimed] = resp.jobs
    assert claimed.job_id == jid and claimed.spec.cpus == 2
    assert (await store.site_demand("a", NOW, NOW - 60)).jobs == 0
    ref = AttemptRef(attempt_id=claimed.attempt_id, lease=claimed.lease)
    await store.sync(pid, SyncRequest(started=[ref], free=free(6), lifetime_s=80_000, claim=False), NOW, LEASE_S)
    assert (await store.get_job(jid)).state is JobState.RUNNING  # type: ignore[union-attr]
    with pytest.raises(ValidationError):
        await store.record_output(pid, claimed.attempt_id, claimed.lease, "other.txt", SHA, 3)
    with pytest.raises(ConflictError):
        await store.record_output(pid, claimed.attempt_id, "stale", "out.txt", SHA, 3)
    pilot = Principal(Role.PILOT, str(pid))
    assert not await store.may_read_file(SHA, pilot)
    await store.record_output(pid, claimed.attempt_id, claimed.lease, "out.txt", SHA, 3)
    out = OutputFile(name="out.txt", sha256=SHA, size=3)
    fin = Finish(attempt_id=claimed.attempt_id, lease=claimed.lease, outcome=Outcome.DONE, exit_code=0, outputs=[out])
    resp = await store.sync(pid, SyncRequest(finished=[fin], free=free(), lifetime_s=80_000), NOW + 5, LEASE_S)
    assert resp.refused == [] and resp.jobs == []
    view = await store.get_job(jid)
    assert view is not None and view.state is JobState.DONE and view.outputs == [out] and view.site == "a"
    assert await store.job_output(jid, "out.txt") == out
    assert await store.may_read_file(SHA, Principal(Role.USER, "alice"))
    assert not await store.may_read_file(SHA, Principal(Role.USER, "bob"))
    [attempt] = await store.attempts_of(jid)
    assert attempt.outcome == "done" and attempt.pilot_id == pid
    again = await store.sync(pid, SyncRequest(finished=[fin], free=free(), lifetime_s=80_000), NOW + 6, LEASE_S)
    assert [r.attempt_id for r in again.refused] == [claimed.attempt_id]  # a report is applied once


async def test_memory_kill_grows_then_retries_run_out(store: Store) -> None:
    [jid] = await store.add_jobs("alice", [job(max_retries=0)], NOW)
    pid = await running_pilot(store)
    for expected in (JobState.IDLE, JobState.FAILED):
        [c] = (await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)).jobs
        fin = Finish(attempt_id=c.attempt_id, lease=c.lease, outcome=Outcome.MEMORY, reason="killed")
        await store.sync(pid, SyncRequest(finished=[fin], free=free(), lifetime_s=80_000, claim=False), NOW, LEASE_S)
        view = await store.get_job(jid)
        assert view is not None and view.state is expected
    assert view.spec.memory_mb == 2000 and view.retries_used == 2
    assert view.reason == "killed"
    # The growth is kept in the job's history, and what the user asked stays beside the grown request.
    asked = job().memory_mb
    assert view.asked == {"memory_mb": asked}
    assert [(e.action, e.by, [(c.field, c.old, c.new) for c in e.changes]) for e in view.history] == [
        ("grown", "server", [("memory_mb", asked, 2000)])
    ]
    [listed] = (await store.list_jobs(JobFilter(ids=[jid])))[0]
    assert listed.asked == view.asked


async def test_pilot_exit_requeues_without_charge_and_expiry_loses(store: Store) -> None:
    ids = await store.add_jobs("alice", [job(), job()], NOW)
    pid = await running_pilot(store)
    claimed = (await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)).jobs
    assert sorted(c.job_id for c in claimed) == ids
    await store.pilot_exit(pid, "walltime reached", 0.5, 0, NOW + 1)
    for jid in ids:
        view = await store.get_job(jid)
        assert view is not None and view.state is JobState.IDLE and view.retries_used == 0
    with pytest.raises(ConflictError):
        await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW + 2, LEASE_S)
    other = await running_pilot(store)
    claimed = (await store.sync(other, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)).jobs
    assert len(claimed) == 2
    assert await store.expire(NOW + LEASE_S + 1, 10_000) == 2
    assert all(a.outcome == "lost" for a in await store.attempts_of(ids[0]) if a.pilot_id == other)
    await store.report_site("a", SHAPE, NOW)
    assert (await store.site_demand("a", NOW + 70, NOW + 1)).jobs == 2  # the silent pilot's cores do not count
    assert await store.expire(NOW + 100_000, 60) == 0
    summary = await store.summary(None)
    assert summary.pilots == {"ended": 2} and summary.jobs == {"idle": 2}


async def test_lost_claims_and_cancel_reach_the_pilot(store: Store) -> None:
    ids = await store.add_jobs("alice", [job(), job()], NOW)
    pid = await running_pilot(store)
    claimed = (await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)).jobs
    keep, lost = claimed
    await store.cancel_job(keep.job_id, NOW)
    resp = await store.sync(
        pid, SyncRequest(free=free(7), lifetime_s=80_000, held=[keep.attempt_id], claim=False), NOW, LEASE_S
    )
    assert resp.cancel == [keep.attempt_id]
    view = await store.get_job(lost.job_id)
    assert view is not None and view.state is JobState.IDLE and view.retries_used == 0
    assert ids


async def test_a_stale_sync_arriving_late_does_not_requeue_a_newer_claim(store: Store) -> None:
    """Sync 1 was given up by the pilot (no answer in time) and reaches the server only after sync 2
    claimed a job the pilot now runs: sync 1's ``held`` predates that claim, so the job stays claimed."""
    [jid] = await store.add_jobs("alice", [job()], NOW)
    pid = await running_pilot(store)
    stale = SyncRequest(free=free(), lifetime_s=80_000, held=[], seq=1)
    [c] = (await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000, held=[], seq=2), NOW, LEASE_S)).jobs
    assert (await store.sync(pid, stale, NOW + 1, LEASE_S)).jobs == []
    view = await store.get_job(jid)
    assert view is not None and view.state is JobState.CLAIMED, view
    [attempt] = await store.attempts_of(jid)
    assert attempt.finished_at is None
    start = SyncRequest(
        free=free(7),
        lifetime_s=80_000,
        held=[c.attempt_id],
        seq=3,
        started=[AttemptRef(attempt_id=c.attempt_id, lease=c.lease)],
    )
    assert (await store.sync(pid, start, NOW + 2, LEASE_S)).refused == []
    view = await store.get_job(jid)
    assert view is not None and view.state is JobState.RUNNING


async def test_a_claim_that_a_later_sync_omits_is_requeued_with_or_without_numbers(store: Store) -> None:
    """A sync sent after the claim's answer (a higher number) that does not hold it: the answer was lost.
    So are claims of a long poll (answered to the same sync). A pilot that numbers nothing: as before."""
    ids = await store.add_jobs("alice", [job() for _ in range(3)], NOW)
    pid = await running_pilot(store, cpus=1)
    [first] = (await store.sync(pid, SyncRequest(free=free(1), lifetime_s=80_000, held=[], seq=4), NOW, LEASE_S)).jobs
    [more] = (await store.claim_more(pid, 0, NOW, LEASE_S, seq=4)).jobs
    same = SyncRequest(free=free(0), lifetime_s=80_000, held=[], seq=4, claim=False)  # the same sync, sent again
    await store.sync(pid, same, NOW + 1, LEASE_S)
    assert {a.finished_at for j in (first.job_id, more.job_id) for a in await store.attempts_of(j)} == {None}
    later = SyncRequest(free=free(0), lifetime_s=80_000, held=[first.attempt_id], seq=5, claim=False)
    await store.sync(pid, later, NOW + 2, LEASE_S)
    lost = await store.get_job(more.job_id)
    assert lost is not None and lost.state is JobState.IDLE and lost.retries_used == 0
    [kept] = await store.attempts_of(first.job_id)
    assert kept.finished_at is None
    # A pilot that sends no numbers: whatever its ``held`` omits is lost, as it always was.
    legacy = SyncRequest(free=free(0), lifetime_s=80_000, held=[], claim=False)
    await store.sync(pid, legacy, NOW + 3, LEASE_S)
    view = await store.get_job(first.job_id)
    assert view is not None and view.state is JobState.IDLE and len(ids) == 3


async def test_start_failures_back_off(store: Store) -> None:
    await store.report_site("a", SHAPE, NOW)
    pilots = [await store.new_pilot("a", NOW) for _ in range(3)]
    assert await store.pilot_states("a", {p: "failed" for p in pilots} | {999: "failed"}, NOW) == 3
    demand = await store.site_demand("a", NOW + 10, NOW)
    assert (demand.start_failures, demand.backoff_s) == (3, 50.0)
    assert (await store.summary(None)).sites[0].start_failures == 3
    await running_pilot(store)
    assert (await store.site_demand("a", NOW + 10, NOW)).start_failures == 0


async def test_operator_drain_pause_and_cap_a_site(store: Store) -> None:
    await store.report_site("a", PilotShape(cpus=2, memory_mb=4000, disk_mb=10_000, walltime_s=86_400), NOW)
    await store.add_jobs("alice", [job(cpus=2) for _ in range(4)], NOW)
    demand = await store.site_demand("a", NOW, NOW - 60)
    assert (demand.mode, demand.max_cpus, demand.pilots) == (SiteMode.OPEN, None, 4)

    await store.set_site_mode("a", SiteMode.PAUSED)
    demand = await store.site_demand("a", NOW, NOW - 60)
    assert (demand.mode, demand.pilots) == (SiteMode.PAUSED, 0)
    await store.set_site_cap("a", 5)
    await store.set_site_mode("a", SiteMode.OPEN)
    assert (await store.site_demand("a", NOW, NOW - 60)).pilots == 2  # 5 cores: two 2-core pilots
    pid = await running_pilot(store)
    await store.set_site_mode("a", SiteMode.PAUSED)
    resp = await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)
    assert resp.jobs == [] and resp.leave is None  # paused: no claims, but the pilot may stay

    await store.set_site_mode("a", SiteMode.OPEN)
    await store.set_site_cap("a", 3)  # one 2-core job fits under 3 cores, a second would not
    claimed = (await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)).jobs
    assert [c.spec.cpus for c in claimed] == [2]
    [site] = [s for s in (await store.summary(None)).sites if s.name == "a"]
    assert (site.mode, site.max_cpus, site.cpus_in_use) == (SiteMode.OPEN, 3, 2)
    assert (await store.site_demand("a", NOW, NOW - 60)).pilots == 0  # 3 cores: one 2-core pilot, and it runs

    await store.set_site_mode("a", SiteMode.DRAINING)
    resp = await store.sync(pid, SyncRequest(free=free(6), lifetime_s=80_000), NOW, LEASE_S)
    assert resp.jobs == [] and resp.leave is not None and "draining" in resp.leave
    assert (await store.claim_more(pid, 4, NOW, LEASE_S)).jobs == []
    await store.set_site_cap("a", None)
    await store.set_site_mode("a", SiteMode.OPEN)
    assert (await store.sync(pid, SyncRequest(free=free(6), lifetime_s=80_000), NOW, LEASE_S)).jobs


async def test_concurrent_claims_never_share_a_job(store: Store) -> None:
    """Pilots claiming at once never get the same job; what one round leaves (rows another claimer
    held locked), the next round claims. There is a pilot per job, and a pilot leaves the race once it
    got a job, so a round always has a pilot for each job left and every round claims at least one."""
    ids = await store.add_jobs("alice", [job() for _ in range(60)], NOW)
    pilots = [await running_pilot(store, cpus=4) for _ in range(60)]
    claimed: list[int] = []
    for _ in range(60):
        if len(claimed) == 60:
            break
        responses = await asyncio.gather(
            *(store.sync(p, SyncRequest(free=free(4), lifetime_s=80_000), NOW, LEASE_S) for p in pilots)
        )
        claimed += [c.job_id for r in responses for c in r.jobs]
        assert all(len(r.jobs) <= 4 for r in responses)
        pilots = [p for p, r in zip(pilots, responses, strict=True) if not r.jobs]
    assert len(claimed) == len(set(claimed)) == 60 and set(claimed) == set(ids)


async def test_firewalled_site_claims_only_staged_jobs(store: Store) -> None:
    inp = InputFile(name="in.dat", sha256=SHA, size=1)
    ids = await store.add_jobs("alice", [job(inputs=[inp]), job()], NOW)
    await store.report_site("fw", SHAPE, NOW)
    assert await store.set_site_network("fw", Network.RELAY, NOW)
    assert not await store.set_site_network("fw", Network.RELAY, NOW)
    assert await store.may_read_file(SHA, Principal(Role.SITE, "fw"))
    assert not await store.may_read_file("b" * 64, Principal(Role.SITE, "fw"))
    view = await store.staging_view("fw", 10)
    assert [j.job_id for j in view.eligible] == ids and view.staged == []
    pid = await running_pilot(store, site="fw")
    assert (await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)).jobs == []
    assert await store.report_staging("fw", [ids[1]], [], NOW) == (1, 0)
    [c] = (await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)).jobs
    assert c.job_id == ids[1]
    assert await store.report_staging("fw", [], [ids[1]], NOW) == (0, 1)


async def test_reopen_keeps_everything(store: Store) -> None:
    ids = await store.add_jobs("alice", [job()], NOW)
    await store.report_site("a", SHAPE, NOW)
    await store.close()
    await store.open()
    await store.recover(NOW, 60)
    assert (await store.get_job(ids[0])) is not None
    assert await store.site_shapes() == {"a": SHAPE}


async def test_usage_provenance_and_monitoring_counts(store: Store) -> None:
    ids = await store.add_jobs("alice", [job(cpus=2, labels={"dataset": "d1"}), job()], NOW)
    await store.report_site("a", SHAPE, NOW)
    pid = await running_pilot(store)
    claimed = (await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)).jobs
    refs = [AttemptRef(attempt_id=c.attempt_id, lease=c.lease) for c in claimed]
    await store.sync(pid, SyncRequest(started=refs, free=free(5), lifetime_s=80_000, claim=False), NOW, LEASE_S)
    snap = await store.monitoring(NOW, "dataset", NOW - 60)
    assert sorted(snap.jobs) == [("alice", "running", False, 1), ("alice", "running", True, 1)]
    assert sorted(snap.running) == [("a", "", False, 1, 1), ("a", "d1", True, 1, 2)]
    [pilots] = snap.pilots
    assert (pilots.site, pilots.state, pilots.pilots, pilots.cores, pilots.cores_free) == ("a", "running", 1, 8, 5)
    first = next(c for c in claimed if c.job_id == ids[0])
    prov = Provenance(host="node1", cpu_user_s=3.0, cpu_system_s=1.0)
    fin = Finish(attempt_id=first.attempt_id, lease=first.lease, outcome=Outcome.DONE, wall_s=4.0, provenance=prov)
    await store.sync(pid, SyncRequest(finished=[fin], free=free(7), lifetime_s=80_000, claim=False), NOW, LEASE_S)
    view = await store.get_job(ids[0])
    assert view is not None and view.usage is not None
    assert (view.usage.cpu_s, view.usage.cpu_efficiency, view.usage.provenance) == (4.0, 0.5, prov)
    [attempt] = await store.attempts_of(ids[0])
    assert attempt.provenance == prov and attempt.cpu_s == 4.0
    await store.expire(NOW, 10_000)  # the reaper folds the PostgreSQL store's deltas; counts stay the same
    snap = await store.monitoring(NOW, "dataset", NOW - 60)
    assert sorted(snap.jobs) == [("alice", "done", True, 1), ("alice", "running", False, 1)]
    assert snap.attempts == [("a", "done", 1)]
    assert [(s.name, s.demand_pilots, s.multicore_idle) for s in snap.sites] == [("a", 0, 0)]
    datasets = {d.name: d for d in await store.datasets("dataset")}
    assert (datasets["d1"].states, datasets["d1"].cpu_s, datasets["d1"].core_wall_s) == ({"done": 1}, 4.0, 8.0)
    assert (datasets[""].states, datasets[""].cores_in_use) == ({"running": 1}, 1)


async def test_priority_orders_only_a_users_own_jobs_and_users_share_the_cores(store: Store) -> None:
    await store.add_jobs("bob", [job(labels={"who": "bob"}) for _ in range(12)], NOW)
    await store.add_jobs("alice", [job(labels={"who": "alice-low"}, priority=1)], NOW)
    await store.add_jobs("alice", [job(labels={"who": "alice"}, priority=10**9) for _ in range(12)], NOW)
    pid = await running_pilot(store, cpus=8)
    claimed = (await store.sync(pid, SyncRequest(free=free(4), lifetime_s=3600), NOW, LEASE_S)).jobs
    assert sorted(c.spec.labels["who"] for c in claimed) == ["alice", "alice", "bob", "bob"]
    assert "alice-low" not in {c.spec.labels["who"] for c in claimed}  # her own order still holds
    # With shares 3:1 and 2 cores each in use, the next 8 cores go 7 to alice and 1 to bob: 9 to 3.
    assert isinstance(store, SqliteStore | PostgresStore)
    store.shares = Shares(per_user={"alice": 3.0})
    other = await running_pilot(store, cpus=8)
    more = (await store.sync(other, SyncRequest(free=free(8), lifetime_s=3600), NOW, LEASE_S)).jobs
    got = [c.spec.labels["who"] for c in more]
    assert (got.count("alice"), got.count("bob")) == (7, 1), got


async def test_purge_removes_old_finished_jobs_only(store: Store) -> None:
    old, kept_idle, recent = await store.add_jobs(
        "alice", [job(outputs=["o"]), job()], NOW - 100
    ) + await store.add_jobs("bob", [job()], NOW)
    pid = await running_pilot(store)
    [c] = (await store.sync(pid, SyncRequest(free=free(1), lifetime_s=80_000), NOW - 100, LEASE_S)).jobs
    assert c.job_id == old
    shared, own = "c" * 64, "d" * 64
    await store.add_file_owner(shared, "alice", 1)  # an upload of alice's with the same content stays
    await store.record_output(pid, c.attempt_id, c.lease, "o", own, 1)
    fin = Finish(
        attempt_id=c.attempt_id, lease=c.lease, outcome=Outcome.DONE, outputs=[OutputFile(name="o", sha256=own, size=1)]
    )
    await store.sync(pid, SyncRequest(finished=[fin], free=free(), lifetime_s=80_000, claim=False), NOW - 50, LEASE_S)
    await store.cancel_job(recent, NOW)
    assert (await store.purge_finished(NOW - 10, 100)).jobs == 1
    assert await store.get_job(old) is None and await store.attempts_of(old) == []
    assert (await store.get_job(kept_idle)) is not None and (await store.get_job(recent)) is not None
    assert await store.purge_finished(NOW - 10, 100) == Purged()
    purged = await store.purge_finished(NOW + 10, 100)
    assert (purged.jobs, purged.attempts, purged.orphan_files) == (1, 0, ())
    await store.expire(NOW, 10_000)
    assert sorted((await store.monitoring(NOW, "dataset", NOW)).jobs) == [("alice", "idle", False, 1)]


async def test_purge_reports_output_files_nothing_refers_to(store: Store) -> None:
    ids = await store.add_jobs("alice", [job(outputs=["o"]), job(outputs=["o"])], NOW)
    pid = await running_pilot(store)
    claimed = (await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)).jobs
    hashes = {ids[0]: "e" * 64, ids[1]: "f" * 64}
    await store.add_file_owner("f" * 64, "alice", 1)  # alice also uploaded that content: it stays
    fins = []
    for c in claimed:
        await store.record_output(pid, c.attempt_id, c.lease, "o", hashes[c.job_id], 1)
        out = OutputFile(name="o", sha256=hashes[c.job_id], size=1)
        fins.append(Finish(attempt_id=c.attempt_id, lease=c.lease, outcome=Outcome.DONE, outputs=[out]))
    await store.sync(pid, SyncRequest(finished=fins, free=free(), lifetime_s=80_000, claim=False), NOW, LEASE_S)
    purged = await store.purge_finished(NOW + 1, 100)
    assert (purged.jobs, purged.attempts, purged.orphan_files) == (2, 2, ("e" * 64,))


async def test_an_older_schema_is_upgraded_in_place_keeping_every_job(store: Store, tmp_path: Path) -> None:
    """A database left at the previous schema version gains the newest migration when opened."""
    ids = await store.add_jobs("alice", [job(), job()], NOW)
    await store.cancel_job(ids[0], NOW - 100)
    await store.close()
    if isinstance(store, SqliteStore):
        db = sqlite3.connect(store.path)
        db.executescript(
            "DROP TRIGGER job_counts_delete; DROP INDEX jobs_finished; DROP TABLE job_events;"
            "CREATE INDEX jobs_busy_owner ON jobs (owner, cpus) WHERE state IN ('claimed', 'running');"
            "UPDATE meta SET value = '1' WHERE key = 'schema_version';"
        )
        db.close()
        latest = 12  # retention (2), claims by shape (3), job history (4), labels and bulk counts (5),
        # reservations (6), counts by label (7), running jobs kept per site and label (8), finished jobs'
        # index by finish time (9), the index of states but idle (10), every state's again (11) and the
        # cores kept with the counts (12)
    else:
        assert isinstance(store, PostgresStore)
        con = await asyncpg.connect(store.url)
        await con.execute(
            "DROP TRIGGER jobs_deleted ON jobs; DROP FUNCTION glidein_jobs_deleted(); DROP INDEX jobs_finished;"
            "DROP INDEX outputs_job; DROP TABLE job_events; DROP INDEX jobs_not_idle;"
            "CREATE INDEX jobs_state ON jobs (state); UPDATE meta SET value = '2' WHERE key = 'schema_version';"
            "CREATE INDEX jobs_busy_owner ON jobs (owner, cpus) WHERE state IN ('claimed', 'running')"
        )
        await con.close()
        latest = 17  # retention (3), site control (4), numbered claims (5), claims by shape (6), job history (7)
        # the label index (8), reservations (9), counts by label (10), token change notices (11), submits
        # counted by the store (12), running jobs kept per site and label (13), cheaper counting (14), the
        # index of states but idle (15), the idle jobs keyed by a hash of their shape (16) and the cores
        # kept with the counts (17)
    await store.open()
    assert [j.id for j in (await store.list_jobs(JobFilter()))[0]] == ids
    assert (await store.hold_job(ids[1], JobAct(by="alice", at=NOW))).history[0].action == "held"
    assert (await store.release_job(ids[1], JobAct(by="alice", at=NOW))).state is JobState.IDLE
    # The upgrade's trigger works: a purged job leaves the counts.
    assert (await store.purge_finished(NOW, 10)).jobs == 1
    await store.expire(NOW, 10_000)
    assert (await store.monitoring(NOW, "dataset", NOW)).jobs == [("alice", "idle", False, 1)]
    if isinstance(store, SqliteStore):
        db = sqlite3.connect(store.path)
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(latest)
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'jobs_idle_shape'").fetchone()[0] == 1
        finished = db.execute("SELECT sql FROM sqlite_master WHERE name = 'jobs_finished'").fetchone()[0]
        assert finished.endswith("WHERE finished_at IS NOT NULL")
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE name LIKE 'jobs_%'")}
        assert "jobs_state" in names and "jobs_not_idle" not in names and "jobs_busy_owner" not in names
        db.close()
    else:
        con = await asyncpg.connect(store.url)
        assert await con.fetchval("SELECT value FROM meta WHERE key = 'schema_version'") == str(latest)
        shape = await con.fetchval("SELECT indexdef FROM pg_indexes WHERE indexname = 'jobs_idle_shape'")
        assert "glidein_shape_key(cpus, memory_mb, gpus, disk_mb, walltime_s, sites)" in shape
        names = {n for (n,) in await con.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'jobs'")}
        assert "jobs_not_idle" in names and "jobs_state" not in names and "jobs_busy_owner" not in names
        await con.close()


async def test_a_claim_finds_small_jobs_behind_many_big_ones_in_claim_order(store: Store) -> None:
    """Candidates are read by shape: a pilot with one free core gets the small jobs queued behind
    every big one, best priority first, then oldest; a whole pilot still takes big jobs first."""
    big = await store.add_jobs("alice", [job(cpus=4) for _ in range(300)], NOW)
    other_shape = JobSpec(argv=["true"], memory_mb=2000, walltime_s=600)
    small = await store.add_jobs("alice", [job(), other_shape, job(priority=5)], NOW)
    gpu = await store.add_jobs("alice", [job(gpus=1)], NOW)
    pid = await running_pilot(store)
    resp = await store.sync(pid, SyncRequest(free=free(1), lifetime_s=80_000), NOW, LEASE_S)
    assert [c.job_id for c in resp.jobs] == [small[2]]  # the higher priority, though submitted last
    resp = await store.sync(pid, SyncRequest(free=free(2), lifetime_s=80_000), NOW, LEASE_S)
    assert [c.job_id for c in resp.jobs] == small[:2]
    other = await running_pilot(store)
    resp = await store.sync(other, SyncRequest(free=free(8), lifetime_s=80_000), NOW, LEASE_S)
    assert [c.job_id for c in resp.jobs] == big[:2]  # no GPU here: the GPU job waits
    assert (await store.get_job(gpu[0])).state is JobState.IDLE  # type: ignore[union-attr]


async def test_a_gpu_pilot_claims_the_waiting_gpu_job_first(store: Store) -> None:
    cpu_jobs = await store.add_jobs("alice", [job() for _ in range(4)], NOW)
    [gpu_job] = await store.add_jobs("alice", [job(gpus=1)], NOW + 1)
    pid = await store.new_pilot("a", NOW)
    res = Resources(cpus=4, memory_mb=16_000, gpus=1, disk_mb=100_000)
    await store.register_pilot(pid, PilotRegister(resources=res, end_time=NOW + 86_400), NOW)
    resp = await store.sync(pid, SyncRequest(free=res, lifetime_s=80_000), NOW + 2, LEASE_S)
    assert [c.job_id for c in resp.jobs] == [gpu_job, *cpu_jobs[:3]]


async def test_a_retiring_pilot_plans_its_last_jobs_to_idle_least(store: Store) -> None:
    specs = [JobSpec(argv=["true"], memory_mb=1000, walltime_s=w) for w in (9000, 3000, 6000, 1200)]
    ids = await store.add_jobs("alice", specs, NOW)
    pid = await running_pilot(store, cpus=1)
    resp = await store.sync(pid, SyncRequest(free=free(1), lifetime_s=7000), NOW, LEASE_S)
    # No job has finished, so jobs are taken to use all they ask: 3000 s, then two of 1200 s would
    # leave 6 idle minutes of its last 7000 s; the longest fit (6000 s) would leave 16.
    assert [c.job_id for c in resp.jobs] == [ids[1]]
    assert resp.leave is None


async def test_a_retiring_pilot_that_no_idle_job_fits_is_told_to_leave(store: Store) -> None:
    pid = await running_pilot(store, cpus=1)
    resp = await store.sync(pid, SyncRequest(free=free(1), lifetime_s=7000), NOW, LEASE_S)
    assert resp.jobs == [] and resp.leave is None  # no job waits: it waits for work as before
    await store.add_jobs("alice", [JobSpec(argv=["true"], memory_mb=1000, walltime_s=9000, sites=["b"])], NOW)
    resp = await store.sync(pid, SyncRequest(free=free(1), lifetime_s=7000), NOW, LEASE_S)
    assert resp.jobs == [] and resp.leave is None  # the long job waits for another site only
    await store.add_jobs("alice", [JobSpec(argv=["true"], memory_mb=1000, walltime_s=9000)], NOW)
    resp = await store.sync(pid, SyncRequest(free=free(1), lifetime_s=7000), NOW + 1, LEASE_S)
    assert resp.jobs == []
    assert resp.leave is not None and "shorter than the walltime" in resp.leave
    resp = await store.sync(pid, SyncRequest(free=free(1), lifetime_s=30 * 3600), NOW + 2, LEASE_S)
    assert resp.leave is None and len(resp.jobs) == 1  # a pilot with time left takes it
