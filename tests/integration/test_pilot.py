"""Real pilots against a real server: mixed jobs, files, limits, SIGTERM, lost pilots, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import time
from pathlib import Path

from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import InputFile, JobSpec, JobState, Role

from ..conftest import LiveServer

FINAL = {JobState.DONE, JobState.FAILED, JobState.CANCELLED}


async def wait_jobs(
    api: ApiClient, ids: list[int], timeout_s: float = 60.0, states: set[JobState] = FINAL
) -> dict[int, JobState]:
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = (await api.list_jobs(ids=ids, limit=len(ids))).jobs
        got = {j.id: j.state for j in jobs}
        if all(s in states for s in got.values()):
            return got
        assert time.monotonic() < deadline, f"jobs not finished in time: {got}"
        await asyncio.sleep(0.2)


async def user_api(live: LiveServer, name: str = "alice") -> ApiClient:
    return live.api(await live.token(Role.USER, name))


async def test_mixed_jobs_with_files_run_on_their_own_cores(live_server: LiveServer, tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("three\nlines\nhere\n")
    async with await user_api(live_server) as api:
        up = await api.upload_file(data)
        inp = InputFile(name="in/data.txt", sha256=up.sha256, size=up.size)
        # Each job records its CPU affinity and time window, and transforms its input.
        script = (
            "grep Cpus_allowed_list /proc/self/status > aff.txt; date +%s.%N > t0; "
            "wc -l < in/data.txt > out.txt; sleep 0.3; date +%s.%N > t1; cat aff.txt t0 t1 >> out.txt"
        )
        specs = [
            JobSpec(script=script, cpus=c, memory_mb=200, walltime_s=60, inputs=[inp], outputs=["out.txt"])
            for c in (1, 2, 1, 1, 2, 1, 2, 1)
        ]
        ids = await api.submit(specs)
        await live_server.start_pilot(cpus=4, memory_mb=2000, idle_timeout_s=3)
        states = await wait_jobs(api, ids)
        assert set(states.values()) == {JobState.DONE}, live_server.pilot_logs()
        windows = []
        for job_id, spec in zip(ids, specs, strict=True):
            job = await api.get_job(job_id)
            assert [o.name for o in job.outputs] == ["out.txt"]
            body = await api.fetch_output(job_id, "out.txt")
            assert hashlib.sha256(body).hexdigest() == job.outputs[0].sha256
            lines = body.decode().split("\n")
            assert lines[0] == "3"
            cores = _cores(lines[1].split(":")[1].strip())
            assert len(cores) == min(spec.cpus, os.cpu_count() or 1) or len(cores) <= spec.cpus
            windows.append((float(lines[2]), float(lines[3]), spec.cpus))
        # At no moment were more slots in use than the pilot has.
        for t0, _, _ in windows:
            in_use = sum(c for a, b, c in windows if a <= t0 < b)
            assert in_use <= 4


def _cores(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


async def test_limits_failures_and_retries(live_server: LiveServer) -> None:
    async with await user_api(live_server) as api:
        ids = await api.submit(
            [
                JobSpec(argv=["sleep", "30"], walltime_s=1, max_retries=0),
                JobSpec(argv=["sh", "-c", "echo oops >&2; exit 3"], max_retries=1, walltime_s=60),
                JobSpec(
                    argv=["python3", "-c", "b = bytearray(400 * 1024 * 1024); import time; time.sleep(5)"],
                    memory_mb=100,
                    max_retries=0,
                    walltime_s=60,
                ),
                JobSpec(argv=["true"], outputs=["never.txt"], max_retries=0, walltime_s=60),
            ]
        )
        await live_server.start_pilot(cpus=2, memory_mb=2000, idle_timeout_s=3)
        await wait_jobs(api, ids, timeout_s=60)
        wall, code, mem, missing = [await api.get_job(i) for i in ids]
        assert wall.state is JobState.FAILED and "walltime" in (wall.reason or "")
        assert code.state is JobState.FAILED and code.exit_code == 3 and code.retries_used == 2
        assert code.attempts == 2  # one retry, then failed
        # killed for memory: retried (even with max_retries=0) with at least its measured peak plus 25%
        first_mem = (await api.attempts(ids[2]))[0]
        assert first_mem.outcome == "memory" and "MB" in (first_mem.reason or "")
        assert mem.spec.memory_mb >= 1.25 * (first_mem.max_rss_mb or 0) > 100
        assert missing.state is JobState.FAILED and "never.txt" in (missing.reason or "")
        logs = await api.attempts(ids[1])
        assert "oops" in logs[-1].stderr_tail


async def test_job_longer_than_pilot_lifetime_is_never_claimed(live_server: LiveServer) -> None:
    async with await user_api(live_server) as api:
        long_id, short_id = await api.submit(
            [JobSpec(argv=["true"], walltime_s=3600), JobSpec(argv=["true"], walltime_s=10)]
        )
        await live_server.start_pilot(cpus=1, walltime_s=120, idle_timeout_s=2)
        await wait_jobs(api, [short_id])
        long_job = await api.get_job(long_id)
        assert long_job.state is JobState.IDLE and long_job.attempts == 0


async def test_sigterm_requeues_running_jobs_without_using_retries(live_server: LiveServer) -> None:
    async with await user_api(live_server) as api:
        (job_id,) = await api.submit([JobSpec(argv=["sleep", "2"], max_retries=0, walltime_s=60)])
        first = await live_server.start_pilot(cpus=1, idle_timeout_s=30)
        await wait_jobs(api, [job_id], states={JobState.RUNNING})
        first.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(first.wait(), 20) == 0
        job = await api.get_job(job_id)
        assert job.state is JobState.IDLE and job.retries_used == 0
        await live_server.start_pilot(cpus=1, idle_timeout_s=2)
        assert (await wait_jobs(api, [job_id]))[job_id] is JobState.DONE
        attempts = await api.attempts(job_id)
        assert [a.outcome for a in attempts] == ["interrupted", "done"]


async def test_lost_pilot_lease_expires_and_job_runs_elsewhere(live_server: LiveServer) -> None:
    async with await user_api(live_server) as api:
        (job_id,) = await api.submit([JobSpec(argv=["sleep", "1"], max_retries=0, walltime_s=60)])
        first = await live_server.start_pilot(cpus=1, idle_timeout_s=30)
        await wait_jobs(api, [job_id], states={JobState.RUNNING})
        os.killpg(first.pid, signal.SIGKILL)
        await first.wait()
        await live_server.start_pilot(cpus=1, idle_timeout_s=20)  # outlives the 5 s lease
        assert (await wait_jobs(api, [job_id], timeout_s=40))[job_id] is JobState.DONE
        outcomes = [a.outcome for a in await api.attempts(job_id)]
        assert outcomes == ["lost", "done"]
        assert (await api.get_job(job_id)).retries_used == 0


async def test_cancel_kills_a_running_job(live_server: LiveServer) -> None:
    async with await user_api(live_server) as api:
        (job_id,) = await api.submit([JobSpec(argv=["sleep", "60"], walltime_s=120)])
        await live_server.start_pilot(cpus=1, idle_timeout_s=2)
        await wait_jobs(api, [job_id], states={JobState.RUNNING})
        await api.cancel(job_id)
        await asyncio.sleep(0.1)
        deadline = time.monotonic() + 20
        while True:
            attempts = await api.attempts(job_id)
            if attempts[-1].outcome == "cancelled":
                break
            assert time.monotonic() < deadline, attempts
            await asyncio.sleep(0.2)
        assert (await api.get_job(job_id)).state is JobState.CANCELLED


async def test_pilot_exits_when_idle_and_reports_occupancy(live_server: LiveServer) -> None:
    async with await user_api(live_server) as api:
        ids = await api.submit([JobSpec(argv=["sleep", "0.5"], walltime_s=60) for _ in range(4)])
        pilot = await live_server.start_pilot(cpus=2, idle_timeout_s=1)
        await wait_jobs(api, ids)
        assert await asyncio.wait_for(pilot.wait(), 20) == 0
    async with live_server.api(live_server.operator_token) as op:
        summary = await op.summary()
    assert summary.pilots.get("ended") == 1
    assert summary.occupancy is not None and 0.1 < summary.occupancy <= 1.0


async def test_failed_self_test_takes_no_work_and_says_why(live_server: LiveServer) -> None:
    async with await user_api(live_server) as api:
        (job_id,) = await api.submit([JobSpec(argv=["true"], walltime_s=60)])
        pilot = await live_server.start_pilot(cpus=1, extra=("--require", "no-such-command-xyz"))
        assert await asyncio.wait_for(pilot.wait(), 20) == 1
        assert (await api.get_job(job_id)).state is JobState.IDLE
    assert "no-such-command-xyz" in live_server.pilot_logs()
    async with live_server.api(live_server.operator_token) as op:
        assert (await op.summary()).pilots == {"ended": 1}


async def test_memory_killed_job_is_retried_with_more_memory(live_server: LiveServer) -> None:
    grow = "b = bytearray(130 * 1024 * 1024); import time; time.sleep(3)"
    async with await user_api(live_server) as api:
        (job_id,) = await api.submit(
            [JobSpec(argv=["python3", "-c", grow], memory_mb=100, max_retries=3, walltime_s=60)]
        )
        await live_server.start_pilot(cpus=1, memory_mb=2000, idle_timeout_s=3, extra=("--prefetch-s", "0"))
        assert (await wait_jobs(api, [job_id], timeout_s=60))[job_id] is JobState.DONE
        job = await api.get_job(job_id)
        # Syncs carry sequence numbers, so no claim is requeued as lost: every attempt is the memory kill or its retry.
        outcomes = [a.outcome for a in await api.attempts(job_id)]
    assert outcomes[0] == "memory" and outcomes[-1] == "done"
    assert job.spec.memory_mb >= 150  # 100 MB, then 150 (and 225 if needed)
    assert job.retries_used == len(outcomes) - 1


async def test_jobs_failing_on_their_own_leave_the_pilot_in_service(live_server: LiveServer) -> None:
    async with await user_api(live_server) as api:
        ids = await api.submit([JobSpec(argv=["false"], walltime_s=60) for _ in range(4)])
        ids += await api.submit([JobSpec(argv=["no-such-command-here"], walltime_s=60) for _ in range(4)])
        pilot = await live_server.start_pilot(cpus=1, idle_timeout_s=2, extra=("--prefetch-s", "0"))
        assert await asyncio.wait_for(pilot.wait(), 60) == 0
        jobs = (await api.list_jobs(ids=ids)).jobs
    assert [j.state for j in jobs] == [JobState.FAILED] * 8
    assert [j.attempts for j in jobs] == [1] * 8  # no retries of the job's own failure by default
    assert jobs[4].reason in ("command 'no-such-command-here' was not found", "exited with code 1")  # bwrap: 1
    async with live_server.api(live_server.operator_token) as op:
        summary = await op.summary()
    assert summary.problems == [] and "black hole" not in live_server.pilot_logs()


async def test_black_hole_pilot_stops_taking_work_and_is_reported(live_server: LiveServer) -> None:
    pilot = await live_server.start_pilot(cpus=1, idle_timeout_s=30, extra=("--prefetch-s", "0"))
    scratch = live_server.tmp / "scratch"
    for _ in range(300):
        workdirs = list(scratch.glob("pilot-*"))
        if workdirs:
            break
        await asyncio.sleep(0.1)
    (workdir,) = workdirs
    shutil.rmtree(workdir)
    workdir.write_text("a broken scratch: no job directory can be made here\n")  # the node, not the jobs
    async with await user_api(live_server) as api:
        ids = await api.submit([JobSpec(argv=["true"], walltime_s=60) for _ in range(3)])
        assert await asyncio.wait_for(pilot.wait(), 30) == 0
        jobs = (await api.list_jobs(ids=ids)).jobs
    assert [j.state for j in jobs] == [JobState.IDLE] * 3  # requeued, not charged: not their fault
    async with live_server.api(live_server.operator_token) as op:
        problems = (await op.summary()).problems
    assert len(problems) == 1 and "black hole: the last 5 jobs could not run on this node" in problems[0]
