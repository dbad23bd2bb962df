"""A batch system's warning signal (SIGTERM with grace, Slurm's --signal) starts a graceful drain of a
real pilot process: jobs that end within the grace finish, the others are interrupted at once and go
back to the queue, and the pilot leaves when its last job is done."""

from __future__ import annotations

import asyncio
import signal
import time

from glidein_client.wire.schema import JobSpec, JobState, Role
from tests.conftest import LiveServer


async def test_sigterm_with_grace_lets_jobs_that_fit_finish(live_server: LiveServer) -> None:
    live = live_server
    async with live.api(await live.token(Role.USER, "alice")) as api:
        short, long_ = await api.submit(
            [
                JobSpec(argv=["sleep", "4"], cpus=1, memory_mb=64, disk_mb=1, walltime_s=10),
                JobSpec(argv=["sleep", "300"], cpus=1, memory_mb=64, disk_mb=1, walltime_s=400),
            ]
        )
        pilot = await live.start_pilot(cpus=2, idle_timeout_s=60, extra=("--signal-grace-s", "30"))
        deadline = time.monotonic() + 30
        while not all([(await api.get_job(j)).state is JobState.RUNNING for j in (short, long_)]):
            assert time.monotonic() < deadline, live.pilot_logs()
            await asyncio.sleep(0.2)
        pilot.send_signal(signal.SIGTERM)  # as Slurm does at preemption or its time limit, KillWait before the kill
        await asyncio.wait_for(pilot.wait(), 25)
        assert (await api.get_job(short)).state is JobState.DONE, live.pilot_logs()
        [attempt] = await api.attempts(long_)
        assert attempt.outcome == "interrupted" and "received SIGTERM" in (attempt.reason or "")
        assert (await api.get_job(long_)).state is JobState.IDLE  # back in the queue, no retry used
        assert "jobs that end within 30 s finish" in live.pilot_logs()
