"""Several attempts reported ended in one sync, on every store backend: each ends as reported (plain
DONE reports may be applied together), a stale lease among them is refused alone, and a report is
applied once."""

from __future__ import annotations

from glidein_client.wire.schema import (
    Finish,
    JobSpec,
    JobState,
    Outcome,
    PilotRegister,
    Provenance,
    Resources,
    SyncRequest,
)
from glidein_server.store.base import JobFilter, Store

NOW = 1_000_000.0
LEASE_S = 600.0
FREE = Resources(cpus=8, memory_mb=16_000, disk_mb=100_000)


async def test_a_sync_ending_several_attempts_ends_each_as_reported(store: Store) -> None:
    spec = JobSpec(argv=["true"], memory_mb=1000, walltime_s=600, max_retries=0)
    ids = await store.add_jobs("alice", [spec] * 5, NOW)
    pid = await store.new_pilot("a", NOW)
    await store.register_pilot(pid, PilotRegister(resources=FREE, end_time=NOW + 86_400), NOW)
    claimed = (await store.sync(pid, SyncRequest(free=FREE, lifetime_s=80_000), NOW, LEASE_S)).jobs
    assert sorted(c.job_id for c in claimed) == ids
    by_job = {c.job_id: c for c in claimed}
    one, two, stale, failed, kept = (by_job[i] for i in ids)
    prov = Provenance(host="n1", cpu_user_s=3.0, cpu_system_s=1.0)
    fins = [
        Finish(attempt_id=two.attempt_id, lease=two.lease, outcome=Outcome.DONE, exit_code=0, wall_s=7.0),
        Finish(attempt_id=failed.attempt_id, lease=failed.lease, outcome=Outcome.FAILED, exit_code=3, reason="bad"),
        Finish(attempt_id=stale.attempt_id, lease="not-its-lease", outcome=Outcome.DONE, exit_code=0),
        Finish(
            attempt_id=one.attempt_id,
            lease=one.lease,
            outcome=Outcome.DONE,
            exit_code=0,
            wall_s=5.0,
            max_rss_mb=12.0,
            stdout_tail="hello",
            provenance=prov,
        ),
    ]
    req = SyncRequest(finished=fins, free=FREE, lifetime_s=80_000, claim=False)
    resp = await store.sync(pid, req, NOW + 10, LEASE_S)
    assert [r.attempt_id for r in resp.refused] == [stale.attempt_id]
    states = {j.id: j.state for j in (await store.list_jobs(JobFilter()))[0]}
    assert states == {
        one.job_id: JobState.DONE,
        two.job_id: JobState.DONE,
        stale.job_id: JobState.CLAIMED,
        failed.job_id: JobState.FAILED,
        kept.job_id: JobState.CLAIMED,
    }
    [attempt] = await store.attempts_of(one.job_id)
    assert (attempt.outcome, attempt.exit_code, attempt.wall_s, attempt.max_rss_mb) == ("done", 0, 5.0, 12.0)
    assert attempt.stdout_tail == "hello" and attempt.cpu_s == 4.0 and attempt.started_at == NOW + 5
    view = await store.get_job(one.job_id)
    assert view is not None and view.exit_code == 0 and view.finished_at == NOW + 10
    assert view.usage is not None and view.usage.provenance == prov
    [attempt] = await store.attempts_of(failed.job_id)
    assert (attempt.outcome, attempt.exit_code) == ("failed", 3)
    counts = (await store.list_jobs(JobFilter()))[1]
    assert (counts.get("done"), counts.get("failed"), counts.get("claimed")) == (2, 1, 2)
    again = await store.sync(pid, req, NOW + 11, LEASE_S)  # a report is applied once
    assert sorted(r.attempt_id for r in again.refused) == sorted(f.attempt_id for f in fins)
    assert (await store.summary(None)).jobs.get("done") == 2
