"""The store contract for hold, release and retry with new requirements: the same tests on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from glidein_client.wire.errors import ConflictError, NotFoundError
from glidein_client.wire.schema import AttemptRef, Finish, JobChange, JobState, Outcome, RetryRequest, SyncRequest
from glidein_server.store.base import JobAct, JobFilter, Store
from tests.integration.test_store_contract import LEASE_S, NOW, SHAPE, free, job, running_pilot, store

__all__ = ["store"]  # the fixture: every test runs on both stores
ALICE = JobAct(by="alice", at=NOW + 1, reason="input file is being rewritten")


async def test_a_held_job_is_not_claimed_nor_demanded_until_released(store: Store) -> None:
    [held, other] = await store.add_jobs("alice", [job(cpus=4), job(cpus=4)], NOW)
    await store.report_site("a", SHAPE, NOW)
    view = await store.hold_job(held, ALICE)
    assert view.state is JobState.HELD and view.reason == "held by alice: input file is being rewritten"
    assert [(e.action, e.by, e.reason, e.at) for e in view.history] == [
        ("held", "alice", "input file is being rewritten", NOW + 1)
    ]
    assert (await store.site_demand("a", NOW, NOW - 60)).jobs == 1  # only the other job
    pid = await running_pilot(store)
    claimed = (await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)).jobs
    assert [c.job_id for c in claimed] == [other]
    assert (await store.hold_job(held, JobAct(by="alice", at=NOW + 2))).history == view.history  # held already
    released = await store.release_job(held, JobAct(by="alice", at=NOW + 3))
    assert released.state is JobState.IDLE and [e.action for e in released.history] == ["held", "released"]
    assert (await store.site_demand("a", NOW, NOW + 60)).jobs == 1  # (the pilot's free cores aside)
    claimed = (await store.sync(pid, SyncRequest(free=free(4), lifetime_s=80_000), NOW, LEASE_S)).jobs
    assert [c.job_id for c in claimed] == [held]
    page, counts = await store.list_jobs(JobFilter(owner="alice"))
    assert [len(j.history) for j in page] == [2, 0] and counts == {"claimed": 2}


async def test_holding_a_running_job_stops_it_on_its_pilot_and_it_stays_held(store: Store) -> None:
    [jid] = await store.add_jobs("alice", [job(max_retries=3)], NOW)
    pid = await running_pilot(store)
    [c] = (await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)).jobs
    ref = AttemptRef(attempt_id=c.attempt_id, lease=c.lease)
    await store.sync(pid, SyncRequest(started=[ref], free=free(7), lifetime_s=80_000, claim=False), NOW, LEASE_S)
    await store.hold_job(jid, ALICE)
    resp = await store.sync(
        pid, SyncRequest(free=free(7), lifetime_s=80_000, held=[c.attempt_id], claim=False), NOW + 2, LEASE_S
    )
    assert resp.cancel == [c.attempt_id]
    with pytest.raises(ConflictError, match="still being stopped"):
        await store.release_job(jid, ALICE)
    # The pilot kills it; whatever the kill looks like, the job stays held, charged nothing.
    fin = Finish(attempt_id=c.attempt_id, lease=c.lease, outcome=Outcome.FAILED, exit_code=-9, reason="killed")
    await store.sync(pid, SyncRequest(finished=[fin], free=free(), lifetime_s=80_000, claim=False), NOW + 3, LEASE_S)
    view = await store.get_job(jid)
    assert view is not None and view.state is JobState.HELD and view.retries_used == 0
    assert (await store.release_job(jid, ALICE)).state is JobState.IDLE


async def test_only_live_jobs_are_held_and_only_held_ones_released(store: Store) -> None:
    [done, idle] = await store.add_jobs("alice", [job(), job()], NOW)
    await store.cancel_job(done, NOW)
    with pytest.raises(ConflictError, match=f"Job {done} is cancelled; only idle or running jobs can be held"):
        await store.hold_job(done, ALICE)
    with pytest.raises(ConflictError, match=f"Job {idle} is idle; only held jobs can be released"):
        await store.release_job(idle, ALICE)
    with pytest.raises(NotFoundError):
        await store.hold_job(999_999, ALICE)
    assert (await store.get_job(done)).history == []  # type: ignore[union-attr]  # refusals leave no trace


async def test_retry_with_new_requirements_records_old_and_new(store: Store) -> None:
    [jid] = await store.add_jobs("alice", [job(cpus=1, sites=["a"])], NOW)
    await store.hold_job(jid, ALICE)
    req = RetryRequest(memory_mb=4096, walltime_s=7200, cpus=2, sites=["b"], reason="more memory")
    view = await store.retry_job(jid, JobAct(by="alice", at=NOW + 5, reason="more memory"), req)
    assert view.state is JobState.IDLE and view.retries_used == 0
    assert (view.spec.cpus, view.spec.memory_mb, view.spec.walltime_s, view.spec.sites) == (2, 4096, 7200, ["b"])
    retried = view.history[-1]
    assert (retried.action, retried.by, retried.reason) == ("retried", "alice", "more memory")
    assert retried.changes == [
        JobChange(field="cpus", old=1, new=2),
        JobChange(field="memory_mb", old=1000, new=4096),
        JobChange(field="walltime_s", old=600, new=7200),
        JobChange(field="sites", old=["a"], new=["b"]),
    ]
    # The new shape is what the demand and the claims see: only site b, with 2 cores.
    await store.report_site("a", SHAPE, NOW)
    await store.report_site("b", SHAPE, NOW)
    assert (await store.site_demand("a", NOW, NOW - 60)).jobs == 0
    assert (await store.site_demand("b", NOW, NOW - 60)).jobs == 1
    pid = await running_pilot(store, site="b")
    [c] = (await store.sync(pid, SyncRequest(free=free(), lifetime_s=80_000), NOW, LEASE_S)).jobs
    assert c.job_id == jid and c.spec.memory_mb == 4096
    with pytest.raises(ConflictError, match="only failed, cancelled or held jobs can be retried"):
        await store.retry_job(jid, ALICE, RetryRequest(cpus=1))


async def test_labels_select_jobs_carrying_all_of_them(store: Store) -> None:
    ids = await store.add_jobs(
        "alice",
        [job(labels={"dataset": "d1", "kind": "reco"}), job(labels={"dataset": "d1"}), job(labels={"kind": "reco"})],
        NOW,
    )
    page, counts = await store.list_jobs(JobFilter(owner="alice", labels=(("dataset", "d1"), ("kind", "reco"))))
    assert [j.id for j in page] == [ids[0]] and counts == {"idle": 1}
    page, _ = await store.list_jobs(JobFilter(label=("dataset", "d1")))
    assert [j.id for j in page] == ids[:2]
    page, _ = await store.list_jobs(JobFilter(labels=(("dataset", "d1"), ("dataset", "d2"))))
    assert page == []
