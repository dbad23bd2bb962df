"""The operator's hand on a site, for real: `glidein-server site drain|pause|resume|cap NAME` (the
CLI, on the running server's state directory) against real pilot processes of that site.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable

from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobSpec, JobState, PilotShape, Role, SiteMode
from tests.conftest import LiveServer

SHAPE = PilotShape(cpus=2, memory_mb=2048, disk_mb=1000, walltime_s=600)


async def operator(live: LiveServer, *args: str) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "glidein_server.cli",
        "site",
        *args,
        "--dir",
        str(live.state_dir),
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out)
    return result


async def until(what: str, check: Callable[[], object], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def job(seconds: float) -> JobSpec:
    return JobSpec(argv=["sleep", str(seconds)], cpus=1, memory_mb=64, disk_mb=1, walltime_s=120)


async def state_of(api: ApiClient, job_id: int) -> JobState:
    return (await api.get_job(job_id)).state


async def test_pause_stops_claims_and_demand_until_resumed(live_server: LiveServer) -> None:
    live = live_server
    async with live.api(await live.token(Role.USER, "alice")) as user, live.api(live.operator_token) as op:
        assert (await operator(live, "pause", "local"))["mode"] == "paused"
        [j] = await user.submit([job(0.1)])
        pilot = await live.start_pilot(cpus=2, idle_timeout_s=30)
        demand = await op.demand("local", SHAPE)
        assert (demand.mode, demand.pilots) == (SiteMode.PAUSED, 0)  # no pilots for a paused site
        await asyncio.sleep(3)  # the pilot syncs (heartbeat 1 s) and claims nothing
        assert await state_of(user, j) is JobState.IDLE and pilot.returncode is None
        summary = await op.summary()
        assert [s.mode for s in summary.sites if s.name == "local"] == [SiteMode.PAUSED]

        assert (await operator(live, "resume", "local"))["mode"] == "open"
        await until("the job to run after resume", lambda: _done(user, j))
        assert (await op.demand("local", SHAPE)).mode is SiteMode.OPEN


async def _done(api: ApiClient, job_id: int) -> bool:
    return await state_of(api, job_id) is JobState.DONE


async def test_drain_lets_running_jobs_finish_then_the_pilot_leaves(live_server: LiveServer) -> None:
    live = live_server
    async with live.api(await live.token(Role.USER, "alice")) as user, live.api(live.operator_token) as op:
        [running] = await user.submit([job(8)])
        pilot = await live.start_pilot(cpus=1, idle_timeout_s=60)  # would stay a minute if idle
        await until("the job to run", lambda: _running(user, running))
        [waiting] = await user.submit([job(0.1)])
        shown = await operator(live, "drain", "local")
        assert shown["mode"] == "draining" and shown["cpus_in_use"] == 1
        assert (await op.demand("local", SHAPE)).pilots == 0
        t0 = time.monotonic()
        await asyncio.wait_for(pilot.wait(), 30)  # it leaves once its job is done, not after 60 s idle
        assert time.monotonic() - t0 < 20
        view = await user.get_job(running)
        assert view.state is JobState.DONE, view  # finished, not interrupted
        assert await state_of(user, waiting) is JobState.IDLE  # never claimed while draining
        assert "its site is draining" in live.pilot_logs()


async def _running(api: ApiClient, job_id: int) -> bool:
    return await state_of(api, job_id) is JobState.RUNNING


async def test_cap_limits_the_cores_the_sites_jobs_hold(live_server: LiveServer) -> None:
    live = live_server
    async with live.api(await live.token(Role.USER, "alice")) as user, live.api(live.operator_token) as op:
        shown = await operator(live, "cap", "local", "1")
        assert shown["max_cpus"] == 1
        ids = await user.submit([job(1.5) for _ in range(3)])
        await live.start_pilot(cpus=2, idle_timeout_s=5)
        most = 0

        async def all_done() -> bool:
            nonlocal most
            summary = await op.summary()
            most = max([most, *(s.cpus_in_use for s in summary.sites if s.name == "local")])
            return all([await state_of(user, i) is JobState.DONE for i in ids])

        await until("the capped jobs to finish one at a time", all_done, timeout_s=40)
        assert most == 1  # a 2-core pilot, yet never more than one job at once
        demand = await op.demand("local", SHAPE)
        assert demand.max_cpus == 1
        assert (await operator(live, "cap", "local", "none"))["max_cpus"] is None


async def test_a_bad_cap_says_what_to_give(live_server: LiveServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "glidein_server.cli",
        "site",
        "cap",
        "local",
        "lots",
        "--dir",
        str(live_server.state_dir),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    assert "'lots' is not a number of cores" in err.decode() and "Traceback" not in err.decode()
