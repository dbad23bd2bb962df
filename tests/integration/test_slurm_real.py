"""The Slurm backend against a REAL single-node Slurm (tests/infra/slurm.py starts it).

Each test uses its own site name, so ``status()`` sees only that test's pilots even though
the cluster (and its finished jobs, kept ``MinJobAge`` seconds) is shared by the session.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from glidein_client.site.config import SiteConfig, parse_site_config
from glidein_client.site.runners.local import CommandResult, LocalRunner
from glidein_client.site.schedulers.base import PilotJob, PilotLaunch, PilotState
from glidein_client.site.schedulers.slurm import SlurmScheduler
from glidein_client.wire.errors import SchedulerError
from tests.infra import slurm as slurm_infra
from tests.infra.slurm import SHORT_PARTITION, SlurmCluster

pytestmark = pytest.mark.slurm
slurm_cluster = slurm_infra.slurm_cluster  # the session fixture: one real cluster for all these tests

_pilot_ids = itertools.count(1)


class CountingRunner(LocalRunner):
    """A local runner that records every command it runs."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    async def run(
        self, argv: list[str], *, stdin: bytes | None = None, env: dict[str, str] | None = None, timeout_s: float = 60.0
    ) -> CommandResult:
        self.commands.append(list(argv))
        return await super().run(argv, stdin=stdin, env=env, timeout_s=timeout_s)

    def count(self, program: str) -> int:
        return sum(1 for argv in self.commands if argv[0] == program)


def make_site(tmp_path: Path, pilot: dict[str, Any] | None = None, batch: dict[str, Any] | None = None) -> SiteConfig:
    raw = {
        "site": {
            "name": f"t{uuid.uuid4().hex[:10]}",
            "server_url": "https://127.0.0.1:1",
            "token_file": str(tmp_path / "site.token"),
            "scratch_dir": str(tmp_path / "scratch"),
            "scheduler": "slurm",
        },
        "pilot": {"cpus": 1, "memory": "100M", "walltime": "10m", **(pilot or {})},
        "batch": batch or {},
    }
    return parse_site_config(raw, str(tmp_path / "site.toml"))


def make_launch(site: SiteConfig, argv: tuple[str, ...], workdir: Path | None = None) -> PilotLaunch:
    pilot_id = next(_pilot_ids)
    wd = workdir or Path(site.site.scratch_dir) / f"pilot-{pilot_id}"
    return PilotLaunch(pilot_id=pilot_id, site=site, workdir=str(wd), token_file=str(wd / "token"), pilot_argv=argv)


def scheduler(cluster: SlurmCluster, site: SiteConfig, runner: LocalRunner | None = None) -> SlurmScheduler:
    return SlurmScheduler(site, runner or LocalRunner(), env=cluster.env)


async def wait_for(
    sched: SlurmScheduler, pilot_id: int, final: set[PilotState], timeout_s: float = 30.0
) -> tuple[PilotJob, list[PilotState]]:
    """Poll status() until the pilot is in one of ``final``; return it and every state seen."""
    seen: list[PilotState] = []
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = {j.pilot_id: j for j in await sched.status()}
        job = jobs.get(pilot_id)
        if job is not None:
            if not seen or seen[-1] is not job.state:
                seen.append(job.state)
            if job.state in final:
                return job, seen
        if time.monotonic() > deadline:
            raise AssertionError(f"pilot {pilot_id} not in {final} after {timeout_s} s; seen {seen}, now {job}")
        await asyncio.sleep(0.2)


async def test_submit_runs_to_done(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    sched = scheduler(slurm_cluster, site)
    launch = make_launch(site, ("sh", "-c", "echo pilot-ran; sleep 2"))
    before = time.time()
    batch_id = await sched.submit(launch)
    assert batch_id.isdigit()
    job, seen = await wait_for(sched, launch.pilot_id, {PilotState.DONE, PilotState.FAILED})
    assert job.state is PilotState.DONE, seen
    assert seen[0] in (PilotState.QUEUED, PilotState.RUNNING)
    assert PilotState.RUNNING in seen
    assert job.batch_id == batch_id
    assert job.native_state == "COMPLETED"
    assert job.submitted_at is not None and before - 2 <= job.submitted_at <= time.time() + 1
    assert (Path(launch.workdir) / "pilot.out").read_text() == "pilot-ran\n"
    assert (Path(launch.workdir) / "pilot.sbatch").stat().st_mode & 0o777 == 0o700


async def test_script_with_every_key_runs(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # Directives and paths that need quoting, set-up lines, and an argument with a quote in it:
    # what sbatch and bash make of the rendered script, for real.
    site = make_site(
        tmp_path,
        pilot={"cpus": 2},
        batch={
            "partition": "debug",
            "account": "phys-123",  # accepted: this cluster has no accounting
            "qos": "normal",
            "extra_directives": ["--mail-type=NONE", "#SBATCH --signal=B:TERM@30"],
            "env_setup": ["GREETING='hello from set-up'", "export GREETING"],
        },
    )
    sched = scheduler(slurm_cluster, site)
    workdir = tmp_path / "my scratch" / "100%" / "pilot"
    launch = make_launch(
        site, ("sh", "-c", 'echo "$GREETING|$SLURM_CPUS_PER_TASK|$1|$(pwd)"', "sh", "it's"), workdir=workdir
    )
    await sched.submit(launch)
    job, seen = await wait_for(sched, launch.pilot_id, {PilotState.DONE, PilotState.FAILED})
    assert job.state is PilotState.DONE, (seen, (workdir / "pilot.err").read_text())
    assert (workdir / "pilot.out").read_text() == f"hello from set-up|2|it's|{workdir}\n"


async def test_whole_node_pilot_runs(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(tmp_path, pilot={"whole_node": True})
    sched = scheduler(slurm_cluster, site)
    launch = make_launch(site, ("sh", "-c", 'echo "$SLURM_CPUS_ON_NODE"'))
    await sched.submit(launch)
    job, seen = await wait_for(sched, launch.pilot_id, {PilotState.DONE, PilotState.FAILED})
    assert job.state is PilotState.DONE, seen
    cpus = slurm_cluster.run(["sinfo", "--noheader", "--format=%c"]).stdout.split()[0]
    assert (Path(launch.workdir) / "pilot.out").read_text().strip() == cpus


async def test_cancel_makes_it_cancelled(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    sched = scheduler(slurm_cluster, site)
    launch = make_launch(site, ("sleep", "300"))
    batch_id = await sched.submit(launch)
    await wait_for(sched, launch.pilot_id, {PilotState.RUNNING})
    await sched.cancel([batch_id])
    job, seen = await wait_for(sched, launch.pilot_id, {PilotState.CANCELLED, PilotState.DONE, PilotState.FAILED})
    assert job.state is PilotState.CANCELLED, seen
    await sched.cancel([batch_id])  # cancelling an ended pilot again is not an error


async def test_held_pilot_is_held(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(tmp_path, batch={"extra_directives": ["--hold"]})
    sched = scheduler(slurm_cluster, site)
    launch = make_launch(site, ("true",))
    batch_id = await sched.submit(launch)
    try:
        job, _ = await wait_for(sched, launch.pilot_id, {PilotState.HELD})
        assert job.native_state == "PENDING"
        assert job.reason == "JobHeldUser"
    finally:
        await sched.cancel([batch_id])


async def test_bad_partition_names_the_config_key(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(tmp_path, batch={"partition": "gpu"})
    with pytest.raises(SchedulerError) as info:
        await scheduler(slurm_cluster, site).submit(make_launch(site, ("true",)))
    assert info.value.message == (
        f"sbatch refused the pilot: invalid partition 'gpu' — check `batch.partition` in {site.path}."
    )
    assert info.value.fields["exit_code"] != 0
    assert "partition" in info.value.fields["stderr"]


async def test_walltime_over_partition_limit_names_the_config_key(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(tmp_path, pilot={"walltime": "5m"}, batch={"partition": SHORT_PARTITION})
    with pytest.raises(SchedulerError) as info:
        await scheduler(slurm_cluster, site).submit(make_launch(site, ("true",)))
    assert "`pilot.walltime`" in info.value.message
    assert info.value.fields["field"] == "pilot.walltime"


async def test_too_much_memory_names_the_config_key(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(tmp_path, pilot={"memory": "1T"})
    with pytest.raises(SchedulerError) as info:
        await scheduler(slurm_cluster, site).submit(make_launch(site, ("true",)))
    assert "`pilot.memory`" in info.value.message
    assert "1048576 MB" in info.value.message


async def test_status_of_many_pilots_is_one_squeue_call(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    runner = CountingRunner()
    sched = scheduler(slurm_cluster, site, runner)
    launches = [make_launch(site, ("sleep", "300")) for _ in range(6)]
    ids = [await sched.submit(launch) for launch in launches]
    try:
        before = runner.count("squeue")
        jobs = await sched.status()
        assert runner.count("squeue") - before == 1
        assert {j.pilot_id: j.batch_id for j in jobs} == {ln.pilot_id: i for ln, i in zip(launches, ids, strict=True)}
        assert all(j.state in (PilotState.QUEUED, PilotState.RUNNING) for j in jobs)
    finally:
        await sched.cancel(ids)
    assert runner.count("scancel") == 1
    for launch in launches:
        job, seen = await wait_for(sched, launch.pilot_id, {PilotState.CANCELLED})


async def test_expired_time_limit_is_timeout(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # The quick way: an administrator moves the running job's end time to now; slurmctld
    # ends it as TIMEOUT at its next time-limit check (every 30 s), exactly as at walltime.
    site = make_site(tmp_path, pilot={"walltime": "1m"}, batch={"partition": SHORT_PARTITION})
    sched = scheduler(slurm_cluster, site)
    launch = make_launch(site, ("sleep", "600"))
    batch_id = await sched.submit(launch)
    await wait_for(sched, launch.pilot_id, {PilotState.RUNNING})
    res = slurm_cluster.run(["scontrol", "update", f"JobId={batch_id}", "EndTime=now"])
    assert res.returncode == 0, res.stderr
    job, seen = await wait_for(
        sched,
        launch.pilot_id,
        {PilotState.TIMEOUT, PilotState.DONE, PilotState.FAILED, PilotState.CANCELLED},
        timeout_s=60,
    )
    assert job.state is PilotState.TIMEOUT, seen
    assert job.native_state == "TIMEOUT"


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_walltime_expiry_is_timeout(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # The rendered --time itself, enforced: Slurm's smallest time limit is one minute and
    # slurmctld checks limits every 30 s, so this takes 60-90 s.
    site = make_site(tmp_path, pilot={"walltime": "1m"}, batch={"partition": SHORT_PARTITION})
    sched = scheduler(slurm_cluster, site)
    launch = make_launch(site, ("sleep", "600"))
    await sched.submit(launch)
    job, seen = await wait_for(
        sched,
        launch.pilot_id,
        {PilotState.TIMEOUT, PilotState.DONE, PilotState.FAILED, PilotState.CANCELLED},
        timeout_s=180,
    )
    assert job.state is PilotState.TIMEOUT, seen
    assert job.native_state == "TIMEOUT"
