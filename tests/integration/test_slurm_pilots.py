"""Pilots under a REAL Slurm, end to end: site client -> sbatch -> pilot -> jobs -> server.

The cluster is the session's single-node Slurm (tests/infra/slurm.py, 2 cores here); each test
has its own server (``live_server``), its own site name, and pilots of 2 cores, so one pilot
fills the node. Every test ends its site's pilots before it returns, so the next one finds the
node free. Site files live under a 0755 directory in /tmp, where Slurm jobs can read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from glidein_client.site.client import CycleReport, SiteClient
from glidein_client.site.config import SiteConfig, parse_site_config
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.schedulers.base import PilotJob, PilotLaunch, PilotState
from glidein_client.site.schedulers.slurm import SlurmScheduler
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import AttemptView, InputFile, JobSpec, JobState, Role
from tests.conftest import LiveServer
from tests.infra import slurm as slurm_infra
from tests.infra.slurm import SlurmCluster

pytestmark = pytest.mark.slurm
slurm_cluster = slurm_infra.slurm_cluster  # the session fixture: one real cluster for all Slurm tests

PILOT_CPUS = 2
#: Attempt outcomes that do not count against a job's retries.
NOT_THE_JOBS_FAULT = {"interrupted", "lost"}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """The site's scratch area: a 0755 directory under /tmp (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="glidein-slurm-site-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class TimedSlurmScheduler(SlurmScheduler):
    """The real Slurm backend, noting when each sbatch returned."""

    def __init__(self, site: SiteConfig, runner: LocalRunner, *, env: dict[str, str]) -> None:
        super().__init__(site, runner, env=env)
        self.submitted: list[tuple[float, str]] = []  # (monotonic time, batch id)

    async def submit(self, launch: PilotLaunch) -> str:
        batch_id = await super().submit(launch)
        self.submitted.append((time.monotonic(), batch_id))
        return batch_id


def site_config(live: LiveServer, shared: Path, name: str, token_file: Path, **site: Any) -> SiteConfig:
    scratch = shared / "scratch"
    scratch.mkdir(mode=0o755, exist_ok=True)
    raw = {
        "site": {
            "name": name,
            "server_url": live.url,
            "token_file": str(token_file),
            "scratch_dir": str(scratch),
            "scheduler": "slurm",
            "cycle_s": 5,
            **site,
        },
        # Jobs here leave markers in the shared directory for their next attempt, which a bubblewrap
        # sandbox would hide from them (isolation is tested in test_job_isolation.py).
        "pilot": {
            "cpus": PILOT_CPUS,
            "memory": "2G",
            "disk": "1G",
            "walltime": "10m",
            "idle_timeout": "3s",
            "isolation": "none",
        },
        # One pilot fills this node: submit them one at a time.
        "limits": {"max_pilots": 2, "max_idle_pilots": 1, "max_submit_per_cycle": 1},
    }
    return parse_site_config(raw, str(shared / f"{name}.toml"))


@contextlib.asynccontextmanager
async def slurm_site(live: LiveServer, cluster: SlurmCluster, shared: Path, **site: Any) -> AsyncIterator[SiteClient]:
    """A site client driving the real Slurm; its pilots are cancelled and gone when it exits."""
    name = f"s{uuid.uuid4().hex[:8]}"
    token = live.write_secret(f"{name}.token", await live.token(Role.SITE, name))
    config = site_config(live, shared, name, token, **site)
    scheduler = TimedSlurmScheduler(config, LocalRunner(), env=cluster.env)
    try:
        async with SiteClient(config, runner=LocalRunner(), scheduler=scheduler) as client:
            yield client
    finally:
        await end_pilots(scheduler)


async def end_pilots(scheduler: SlurmScheduler, timeout_s: float = 30.0) -> None:
    """Cancel the site's pilots and wait until Slurm has let them go (KillWait is 5 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        active = [p.batch_id for p in await scheduler.status() if p.state.active]
        if not active:
            return
        await scheduler.cancel(active)
        assert time.monotonic() < deadline, f"pilots {active} still in the batch queue"
        await asyncio.sleep(0.5)


async def slurm(cluster: SlurmCluster, *argv: str) -> str:
    """Run a Slurm command against the test cluster (off the event loop, where the server runs)."""
    res = await asyncio.to_thread(cluster.run, list(argv))
    assert res.returncode == 0, f"{' '.join(argv)}: {res.stderr}"
    return res.stdout


def scontrol_fields(text: str) -> dict[str, str]:
    """``scontrol show job N`` as key -> value (values without spaces are enough here)."""
    fields: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key not in fields:
            fields[key] = value
    return fields


def pilot_logs(site: SiteConfig) -> str:
    """Every pilot's stdout and stderr, for failure messages."""
    base = Path(site.site.scratch_dir) / "pilots-meta"
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')}" for p in sorted(base.glob("*/pilot.*")))


async def until(
    what: str, check: Callable[[], Awaitable[bool]], timeout_s: float, site: SiteConfig, every_s: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s} s\n{pilot_logs(site)}"
        await asyncio.sleep(every_s)


async def cycle_until_submitted(client: SiteClient, timeout_s: float = 30.0) -> CycleReport:
    """Run cycles (one a second, as a daemon with a short cycle would) until one submits a pilot."""
    deadline = time.monotonic() + timeout_s
    while True:
        report = await client.cycle()
        if report.submitted:
            return report
        assert time.monotonic() < deadline, f"no pilot submitted: {report.summary()}\n{pilot_logs(client.site)}"
        await asyncio.sleep(1.0)


async def pilot_of(client: SiteClient, batch_id: str) -> PilotJob:
    pilots = {p.batch_id: p for p in await client.scheduler.status()}
    assert batch_id in pilots, (batch_id, pilots)
    return pilots[batch_id]


async def job_in(api: ApiClient, job_id: int, states: set[JobState]) -> bool:
    return (await api.get_job(job_id)).state in states


async def first_attempt_ended(api: ApiClient, job_id: int) -> bool:
    attempts = await api.attempts(job_id)
    return bool(attempts) and attempts[0].outcome is not None


def requeue_script(marker: Path) -> str:
    """A job that blocks on its first attempt (until its pilot is taken away) and is quick after.

    The blocking attempt execs ``sleep``, so the job is one process: Slurm's SIGTERM (sent to
    every process it finds in the pilot's tree, without cgroups here) ends it as a whole. A shell
    waiting for ``sleep`` could see only ``sleep`` die, go on and exit 0.
    """
    return (
        f"if [ ! -e {marker} ]; then touch {marker}; exec sleep 120; fi; "
        f'echo "ran in Slurm job $SLURM_JOB_ID" > out.txt'
    )


def assert_requeued_without_retry(first: AttemptView, job_retries: int, site: SiteConfig) -> None:
    assert first.outcome in NOT_THE_JOBS_FAULT, f"{first}\n{pilot_logs(site)}"
    assert job_retries == 0


async def test_client_submits_pilots_that_run_mixed_jobs_with_files(
    live_server: LiveServer, slurm_cluster: SlurmCluster, shared_dir: Path
) -> None:
    cpus_per_job = (1, 2, 1, 1, 2, 1, 2, 1)
    script = (
        "wc -l < in.txt > out.txt; grep Cpus_allowed_list /proc/self/status | cut -f2 >> out.txt; "
        "echo $SLURM_JOB_ID >> out.txt; sleep 0.2"
    )
    async with (
        slurm_site(live_server, slurm_cluster, shared_dir) as client,
        live_server.api(await live_server.token(Role.USER, "alice")) as api,
    ):
        site = client.site
        specs = []
        for i, cpus in enumerate(cpus_per_job):
            data = shared_dir / f"input-{i}.txt"
            data.write_text("line\n" * (i + 1))
            up = await api.upload_file(data)
            specs.append(
                JobSpec(
                    script=script,
                    cpus=cpus,
                    memory_mb=200,
                    walltime_s=60,
                    max_retries=0,
                    inputs=[InputFile(name="in.txt", sha256=up.sha256, size=up.size)],
                    outputs=["out.txt"],
                )
            )
        ids = await api.submit(specs)

        first = await client.cycle()
        assert first.demand_pilots >= 1 and len(first.submitted) == 1, first
        # sbatch made it a Slurm job named after the site and the pilot, with the pilot's shape.
        batch_id = first.submitted[0]
        job = scontrol_fields(await slurm(slurm_cluster, "scontrol", "show", "job", batch_id))
        assert job["JobName"].startswith(f"glidein-{site.name}-"), job
        assert job["NumCPUs"] == str(PILOT_CPUS), job
        assert job["JobState"] in ("PENDING", "RUNNING"), job
        listed = await slurm(slurm_cluster, "squeue", "--me", "--noheader", "--format=%i %j", f"--jobs={batch_id}")
        assert listed.split() == [batch_id, job["JobName"]]

        submitted = list(first.submitted)
        deadline = time.monotonic() + 60
        while True:
            states = {j.id: j.state for j in (await api.list_jobs(ids=ids, limit=len(ids))).jobs}
            if all(s.final for s in states.values()):
                break
            assert time.monotonic() < deadline, f"jobs not done: {states}\n{pilot_logs(site)}"
            await asyncio.sleep(1.0)
            submitted += (await client.cycle()).submitted
        assert set(states.values()) == {JobState.DONE}, f"{states}\n{pilot_logs(site)}"

        for i, (job_id, cpus) in enumerate(zip(ids, cpus_per_job, strict=True)):
            view = await api.get_job(job_id)
            body = await api.fetch_output(job_id, "out.txt")
            assert [o.name for o in view.outputs] == ["out.txt"]
            assert hashlib.sha256(body).hexdigest() == view.outputs[0].sha256
            lines, cores, slurm_job = body.decode().splitlines()
            assert int(lines) == i + 1  # computed from its own input
            assert len(_cores(cores)) == cpus  # pinned to as many cores as it asked for
            assert slurm_job in submitted  # ran inside a pilot the client submitted with sbatch
            assert view.retries_used == 0 and view.attempts == 1

        # With the work done, pilots leave by themselves (idle) or are removed while queued.
        async def no_active_pilot() -> bool:
            report = await client.cycle()
            assert report.submitted == (), report
            return report.queued == report.running == 0

        await until("pilots gone", no_active_pilot, 30, site, every_s=1.0)
        ended = {p.batch_id: p for p in await client.scheduler.status()}
        assert set(submitted) <= set(ended)
        assert {ended[b].state for b in submitted} <= {PilotState.DONE, PilotState.CANCELLED}
        assert ended[batch_id].state is PilotState.DONE, ended[batch_id]


def _cores(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


async def test_scancel_of_a_pilot_requeues_its_job_which_finishes_in_another_pilot(
    live_server: LiveServer, slurm_cluster: SlurmCluster, shared_dir: Path
) -> None:
    async with (
        slurm_site(live_server, slurm_cluster, shared_dir) as client,
        live_server.api(await live_server.token(Role.USER, "alice")) as api,
    ):
        site = client.site
        (job_id,) = await api.submit(
            [
                JobSpec(
                    script=requeue_script(shared_dir / "began"),
                    cpus=1,
                    memory_mb=100,
                    walltime_s=180,
                    max_retries=0,
                    outputs=["out.txt"],
                )
            ]
        )
        (first_batch,) = (await client.cycle()).submitted
        await until("job running", lambda: job_in(api, job_id, {JobState.RUNNING}), 30, site)
        assert (await pilot_of(client, first_batch)).state is PilotState.RUNNING

        await slurm(slurm_cluster, "scancel", first_batch)
        await until("first attempt ended", lambda: first_attempt_ended(api, job_id), 20, site)
        first = (await api.attempts(job_id))[0]
        view = await api.get_job(job_id)
        assert_requeued_without_retry(first, view.retries_used, site)
        assert view.state in (JobState.IDLE, JobState.CLAIMED, JobState.RUNNING, JobState.DONE), view

        (second_batch,) = (await cycle_until_submitted(client)).submitted
        assert second_batch != first_batch
        await until("job done", lambda: job_in(api, job_id, {JobState.DONE, JobState.FAILED}), 40, site)
        view = await api.get_job(job_id)
        assert view.state is JobState.DONE, f"{view}\n{pilot_logs(site)}"
        assert view.retries_used == 0
        attempts = await api.attempts(job_id)
        assert [a.outcome for a in attempts][1:] == ["done"] and len(attempts) == 2, f"{attempts}\n{pilot_logs(site)}"
        assert attempts[0].pilot_id != attempts[1].pilot_id
        assert (await api.fetch_output(job_id, "out.txt")).decode() == f"ran in Slurm job {second_batch}\n"
        assert (await pilot_of(client, first_batch)).state is PilotState.CANCELLED


async def test_pilot_past_its_slurm_time_limit_is_timeout_and_its_job_is_requeued(
    live_server: LiveServer, slurm_cluster: SlurmCluster, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        slurm_site(live_server, slurm_cluster, shared_dir) as client,
        live_server.api(await live_server.token(Role.USER, "alice")) as api,
    ):
        site = client.site
        reported: list[dict[str, str]] = []
        send_states = client.api.pilot_states

        async def record_states(site_name: str, states: dict[str, str], failure: str | None = None) -> None:
            reported.append(dict(states))
            await send_states(site_name, states, failure)

        monkeypatch.setattr(client.api, "pilot_states", record_states)

        (job_id,) = await api.submit(
            [
                JobSpec(
                    script=requeue_script(shared_dir / "began"),
                    cpus=1,
                    memory_mb=100,
                    walltime_s=180,
                    max_retries=0,
                    outputs=["out.txt"],
                )
            ]
        )
        (first_batch,) = (await client.cycle()).submitted
        await until("job running", lambda: job_in(api, job_id, {JobState.RUNNING}), 30, site)
        first_pilot = (await pilot_of(client, first_batch)).pilot_id

        # As at the end of its walltime: slurmctld ends the job as TIMEOUT at its next time-limit
        # check (every 30 s), sending SIGTERM, then SIGKILL after KillWait (5 s).
        await slurm(slurm_cluster, "scontrol", "update", f"JobId={first_batch}", "EndTime=now")

        async def timed_out() -> bool:
            pilot = await pilot_of(client, first_batch)
            assert pilot.state in (PilotState.RUNNING, PilotState.TIMEOUT), pilot
            return pilot.state is PilotState.TIMEOUT

        await until("pilot timed out", timed_out, 60, site, every_s=0.5)
        assert (await pilot_of(client, first_batch)).native_state == "TIMEOUT"
        # The job is back in the queue with its retries untouched: the pilot reported it
        # interrupted on SIGTERM, or, had it been killed first, its lease expired (5 s).
        await until("first attempt ended", lambda: first_attempt_ended(api, job_id), 20, site)
        first = (await api.attempts(job_id))[0]
        assert_requeued_without_retry(first, (await api.get_job(job_id)).retries_used, site)

        (second_batch,) = (await cycle_until_submitted(client)).submitted
        # The client told the server what Slurm says of the first pilot.
        assert any(states.get(str(first_pilot)) == "timeout" for states in reported), reported
        await until("job done", lambda: job_in(api, job_id, {JobState.DONE, JobState.FAILED}), 40, site)
        view = await api.get_job(job_id)
        assert view.state is JobState.DONE, f"{view}\n{pilot_logs(site)}"  # max_retries=0, and still done
        assert view.retries_used == 0
        assert [a.outcome for a in await api.attempts(job_id)][1:] == ["done"]
        assert (await api.fetch_output(job_id, "out.txt")).decode() == f"ran in Slurm job {second_batch}\n"
        if first.outcome == "interrupted":  # reported by the pilot itself, on Slurm's SIGTERM
            pilot_err = (
                Path(site.site.scratch_dir) / "pilots-meta" / f"glidein-{site.name}-{first_pilot}" / "pilot.err"
            ).read_text(errors="replace")
            assert "stopping: received SIGTERM" in pilot_err, pilot_err


async def test_daemon_submits_a_pilot_at_once_when_work_arrives(
    live_server: LiveServer, slurm_cluster: SlurmCluster, shared_dir: Path
) -> None:
    cycles: list[CycleReport] = []
    async with (
        slurm_site(live_server, slurm_cluster, shared_dir, cycle_s=60) as client,
        live_server.api(await live_server.token(Role.USER, "alice")) as api,
    ):
        site = client.site
        scheduler = client.scheduler
        assert isinstance(scheduler, TimedSlurmScheduler)
        real_cycle = client.cycle

        async def counted_cycle() -> CycleReport:
            report = await real_cycle()
            cycles.append(report)
            return report

        client.cycle = counted_cycle  # type: ignore[method-assign]
        stop = asyncio.Event()
        daemon = asyncio.create_task(client.run_forever(stop=stop))
        try:

            async def first_cycle_done() -> bool:
                return len(cycles) == 1

            await until("first cycle", first_cycle_done, 10, site, every_s=0.05)
            assert cycles[0].submitted == () and cycles[0].demand_pilots == 0
            await asyncio.sleep(0.5)  # the daemon now waits: its next timer tick is a minute away

            t0 = time.monotonic()
            (job_id,) = await api.submit([JobSpec(argv=["true"], cpus=1, memory_mb=100, walltime_s=60)])

            async def pilot_submitted() -> bool:
                return bool(scheduler.submitted)

            await until("pilot submitted", pilot_submitted, 10, site, every_s=0.01)
            reaction_s = scheduler.submitted[0][0] - t0
            assert reaction_s < 2.0, reaction_s  # measured ~0.1 s; the timer would say 60 s
            await until("job done", lambda: job_in(api, job_id, {JobState.DONE, JobState.FAILED}), 30, site)
            assert (await api.get_job(job_id)).state is JobState.DONE, pilot_logs(site)
        finally:
            stop.set()
            await asyncio.wait_for(daemon, 10)
        assert len(cycles) >= 2
