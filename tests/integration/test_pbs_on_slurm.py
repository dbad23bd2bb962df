"""The PBS backend (Torque dialect) against a REAL Slurm through Slurm's Torque wrappers.

Debian's ``slurm-wlm-torque`` (22.05.8) provides ``qsub``, ``qstat`` and ``qdel`` as Perl
wrappers over Slurm; ``tests/infra/slurm.py`` starts the single-node cluster. What the
wrappers do, as seen here: ``qstat --version`` is refused (exit 2), so the backend speaks
Torque; ``qstat -f`` lists every job with tab-indented attributes and no exit status, and
exits 153 when there is no job; ``qsub`` passes the script's ``#PBS`` lines to ``sbatch``
(which reads ``-N``, ``-l nodes=1:ppn=N,mem=M``, ``-l walltime``) but puts its own output
options on the command line, hence glidein's ``-j oe -o`` there; ``qdel`` is silent and exits
1 for a job that has ended.

Each test uses its own site name, so ``status()`` sees only that test's pilots even though
the cluster (and its ended jobs, kept ``MinJobAge`` seconds) is shared by the session.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from glidein_client.site.config import SiteConfig, parse_site_config
from glidein_client.site.runners.local import CommandResult, LocalRunner
from glidein_client.site.schedulers.base import PilotJob, PilotLaunch, PilotState
from glidein_client.site.schedulers.pbs import PbsScheduler
from glidein_client.wire.errors import SchedulerError
from tests.infra import slurm as slurm_infra
from tests.infra.slurm import SHORT_PARTITION, SlurmCluster

pytestmark = pytest.mark.slurm
slurm_cluster = slurm_infra.slurm_cluster  # the session fixture: one real cluster for all these tests

WRAPPERS = ("qsub", "qstat", "qdel")
_pilot_ids = itertools.count(1)


def _wrappers_missing() -> str | None:
    for name in WRAPPERS:
        path = shutil.which(name)
        if path is None:
            return f"{name} is not installed"
        with open(path, "rb") as fh:
            head = fh.read(4096)
        if b"perl" not in head.split(b"\n", 1)[0] or b"slurm" not in head.lower():
            return f"{path} is not Slurm's Torque wrapper"
    return None


@pytest.fixture(scope="module")
def cluster(slurm_cluster: SlurmCluster) -> SlurmCluster:
    reason = _wrappers_missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}: run tests/infra/install_slurm.sh as root.", pytrace=False)
        pytest.skip(f"{reason} (Debian package slurm-wlm-torque)")
    return slurm_cluster


class CountingRunner(LocalRunner):
    """A local runner that records every command it runs."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    async def run(
        self, argv: list[str], *, stdin: bytes | None = None, env: dict[str, str] | None = None, timeout_s: float = 60.0
    ) -> CommandResult:
        self.commands.append(list(argv))
        return await super().run(argv, stdin=stdin, env=env, timeout_s=timeout_s)


def make_site(tmp_path: Path, pilot: dict[str, Any] | None = None, batch: dict[str, Any] | None = None) -> SiteConfig:
    raw = {
        "site": {
            "name": f"p{uuid.uuid4().hex[:10]}",
            "server_url": "https://127.0.0.1:1",
            "token_file": str(tmp_path / "site.token"),
            "scratch_dir": str(tmp_path / "scratch"),
            "scheduler": "pbs",
        },
        "pilot": {"cpus": 1, "memory": "100M", "walltime": "10m", **(pilot or {})},
        "batch": batch or {},
    }
    return parse_site_config(raw, str(tmp_path / "site.toml"))


def make_launch(site: SiteConfig, argv: tuple[str, ...]) -> PilotLaunch:
    pilot_id = next(_pilot_ids)
    workdir = Path(site.site.scratch_dir) / f"pilot-{pilot_id}"
    return PilotLaunch(
        pilot_id=pilot_id, site=site, workdir=str(workdir), token_file=str(workdir / "token"), pilot_argv=argv
    )


async def wait_for(
    sched: PbsScheduler, pilot_id: int, final: set[PilotState], timeout_s: float = 30.0
) -> tuple[PilotJob, list[PilotState]]:
    """Poll status() until the pilot is in one of ``final``; return it and every state seen."""
    seen: list[PilotState] = []
    deadline = time.monotonic() + timeout_s
    while True:
        job = {j.pilot_id: j for j in await sched.status()}.get(pilot_id)
        if job is not None:
            if not seen or seen[-1] is not job.state:
                seen.append(job.state)
            if job.state in final:
                return job, seen
        if time.monotonic() > deadline:
            raise AssertionError(f"pilot {pilot_id} not in {final} after {timeout_s} s; seen {seen}, now {job}")
        await asyncio.sleep(0.3)


def slurm_job(cluster: SlurmCluster, batch_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict: what Slurm made of the script's #PBS lines."""
    out = cluster.run(["scontrol", "show", "job", batch_id]).stdout
    return dict(word.split("=", 1) for word in out.split() if "=" in word)


async def test_submit_runs_to_the_end(cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(tmp_path, batch={"env_setup": ["GREETING='hello from set-up'", "export GREETING"]})
    runner = CountingRunner()
    sched = PbsScheduler(site, runner, env=cluster.env)
    launch = make_launch(site, ("sh", "-c", 'echo "$GREETING|$(pwd)"; sleep 2'))
    before = time.time()
    batch_id = await sched.submit(launch)
    assert batch_id.isdigit()
    assert sched.flavour == "torque"
    assert runner.commands[0] == ["qstat", "--version"]

    slurm = slurm_job(cluster, batch_id)
    assert slurm["JobName"] == launch.tag
    assert slurm["TimeLimit"] == "00:10:00"
    assert slurm["MinMemoryNode"] == "100M"
    assert slurm["StdOut"] == f"{launch.workdir}/pilot.out"

    job, seen = await wait_for(sched, launch.pilot_id, {PilotState.DONE, PilotState.FAILED})
    assert PilotState.RUNNING in seen
    assert (job.batch_id, job.state, job.native_state) == (batch_id, PilotState.DONE, "C")
    assert job.submitted_at is not None and before - 2 <= job.submitted_at <= time.time() + 1
    assert (Path(launch.workdir) / "pilot.out").read_text() == f"hello from set-up|{launch.workdir}\n"
    assert [c[0] for c in runner.commands].count("qsub") == 1
    assert ["qstat", "--version"] not in runner.commands[1:]  # the flavour is asked once


async def test_cancel_ends_a_running_pilot(cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(tmp_path)
    sched = PbsScheduler(site, LocalRunner(), env=cluster.env)
    launch = make_launch(site, ("sleep", "300"))
    batch_id = await sched.submit(launch)
    await wait_for(sched, launch.pilot_id, {PilotState.RUNNING})
    await sched.cancel([batch_id])
    job, _ = await wait_for(sched, launch.pilot_id, {PilotState.DONE, PilotState.CANCELLED, PilotState.FAILED})
    # The wrapper shows every ended job as C without an exit status: how it ended is not visible.
    assert (job.state, job.native_state) == (PilotState.DONE, "C")
    assert job.reason == "ended; the batch system reports no exit status"
    assert slurm_job(cluster, batch_id)["JobState"] == "CANCELLED"
    await sched.cancel([batch_id])  # the wrapper's qdel exits 1 silently for an ended job: not an error


async def test_cancel_a_queued_pilot_and_status_of_many(cluster: SlurmCluster, tmp_path: Path) -> None:
    cpus = int(cluster.run(["sinfo", "--noheader", "--format=%c"]).stdout.split()[0])
    site = make_site(tmp_path, pilot={"cpus": cpus})
    runner = CountingRunner()
    sched = PbsScheduler(site, runner, env=cluster.env, flavour="torque")
    launches = [make_launch(site, ("sleep", "300")) for _ in range(3)]
    ids = [await sched.submit(launch) for launch in launches]
    try:
        # Each pilot takes the whole node: one runs, the others wait.
        assert slurm_job(cluster, ids[0])["NumCPUs"] == str(cpus)
        await wait_for(sched, launches[0].pilot_id, {PilotState.RUNNING})
        before = len(runner.commands)
        jobs = {j.pilot_id: j for j in await sched.status()}
        assert len(runner.commands) == before + 1  # one qstat for all of them
        assert {jobs[launch.pilot_id].state for launch in launches[1:]} == {PilotState.QUEUED}
    finally:
        await sched.cancel(ids)
    ended = [
        (await wait_for(sched, launch.pilot_id, {PilotState.DONE, PilotState.CANCELLED}))[0] for launch in launches
    ]
    # The wrapper shows no exit status: the one that ran reads as done; those deleted before
    # they ran (no exec_host, as Torque's keep_completed jobs) read as cancelled.
    assert [job.state for job in ended] == [PilotState.DONE, PilotState.CANCELLED, PilotState.CANCELLED]
    assert {slurm_job(cluster, i)["JobState"] for i in ids} == {"CANCELLED"}


async def test_status_is_empty_without_pilots(cluster: SlurmCluster, tmp_path: Path) -> None:
    sched = PbsScheduler(make_site(tmp_path), LocalRunner(), env=cluster.env)
    assert await sched.status() == []  # other tests' jobs (other sites) are not this site's pilots


async def test_bad_queue_names_the_config_key(cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(tmp_path, batch={"partition": "gpu"})
    with pytest.raises(SchedulerError) as info:
        await PbsScheduler(site, LocalRunner(), env=cluster.env).submit(make_launch(site, ("true",)))
    assert info.value.message == (
        f"qsub refused the pilot: the queue 'gpu' does not exist or takes no jobs — check `batch.partition` "
        f"in {site.path}."
    )
    assert info.value.hint == "(qsub said: Batch job submission failed: Invalid partition name specified)"
    assert info.value.fields["exit_code"] != 0
    assert "invalid partition" in info.value.fields["stdout"]


async def test_walltime_over_queue_limit_names_the_config_key(cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(tmp_path, pilot={"walltime": "5m"}, batch={"partition": SHORT_PARTITION})
    with pytest.raises(SchedulerError) as info:
        await PbsScheduler(site, LocalRunner(), env=cluster.env).submit(make_launch(site, ("true",)))
    assert info.value.fields["field"] == "pilot.walltime"
    assert "`pilot.walltime`" in info.value.message


async def test_whole_node_is_refused_by_the_wrapper(cluster: SlurmCluster, tmp_path: Path) -> None:
    # Torque's node-exclusive -n is not among the #PBS options sbatch understands.
    site = make_site(tmp_path, pilot={"whole_node": True})
    with pytest.raises(SchedulerError) as info:
        await PbsScheduler(site, LocalRunner(), env=cluster.env).submit(make_launch(site, ("true",)))
    assert info.value.fields["field"] == "pilot.whole_node"
    assert "`pilot.whole_node`" in info.value.message


async def test_every_other_key_is_taken(cluster: SlurmCluster, tmp_path: Path) -> None:
    site = make_site(
        tmp_path,
        batch={
            "partition": "debug",
            "account": "phys-123",  # accepted: this cluster has no accounting
            "qos": "normal",  # -l qos=: passed over by sbatch
            "extra_directives": ["-m n", "#PBS -W umask=022"],
            "env_setup": ["echo set-up-ran"],
        },
    )
    sched = PbsScheduler(site, LocalRunner(), env=cluster.env)
    launch = make_launch(site, ("sh", "-c", "echo pilot-ran"))
    batch_id = await sched.submit(launch)
    slurm = slurm_job(cluster, batch_id)
    assert (slurm["Partition"], slurm["Account"]) == ("debug", "phys-123")
    job, _ = await wait_for(sched, launch.pilot_id, {PilotState.DONE})
    assert (Path(launch.workdir) / "pilot.out").read_text() == "set-up-ran\npilot-ran\n"
