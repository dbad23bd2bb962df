"""pilot.signal_grace under a REAL Slurm, through `glidein-client once`: the pilot's script asks Slurm
for SIGTERM before the time limit (``#SBATCH --signal=B:TERM@SECONDS``), and the pilot that gets it lets
a job that ends within the grace finish while the job that would not is given back to the queue.

Also here, as it needs a started pilot: a pilot Slurm suspends is reported as suspended, not queued.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from glidein_client.site.config import load_site_config
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.schedulers.slurm import SlurmScheduler
from glidein_client.wire.schema import JobSpec, JobState, Role
from tests.conftest import LiveServer
from tests.infra import slurm as slurm_infra
from tests.infra.slurm import SlurmCluster
from tests.integration.test_slurm_pilots import end_pilots, scontrol_fields, slurm

pytestmark = pytest.mark.slurm
slurm_cluster = slurm_infra.slurm_cluster

GRACE_S = 300  # at most half the pilot's walltime


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """The site's scratch area: a 0755 directory under /tmp, where Slurm jobs can read it."""
    path = Path(tempfile.mkdtemp(prefix="glidein-grace-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(live: LiveServer, shared: Path, name: str, token: Path) -> Path:
    scratch = shared / "scratch"
    scratch.mkdir(mode=0o755, exist_ok=True)
    path = shared / f"{name}.toml"
    path.write_text(
        f"""[site]
name = "{name}"
url = "{live.url}"
token_file = "{token}"
scratch_dir = "{scratch}"
scheduler = "slurm"

[pilot]
cpus = 2
memory = "2G"
disk = "1G"
walltime = "10m"
idle_timeout = "30s"
isolation = "none"
signal_grace = "{GRACE_S}s"

[limits]
max_pilots = 1
max_idle_pilots = 1
"""
    )
    return path


async def client_cli(cluster: SlurmCluster, shared: Path, *args: str, json_output: bool = True) -> dict[str, object]:
    """`glidein-client ARGS --json` against the cluster: its JSON (without --json: {"text": stdout})."""
    env = {**cluster.command_env(), "XDG_RUNTIME_DIR": str(shared)}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "glidein_client.site.cli", *args, *(["--json"] if json_output else [])),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    if not json_output:
        return {"text": out.decode()}
    result: dict[str, object] = json.loads(out)
    return result


def pilot_logs(meta: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(meta.glob("*/pilot.*")))


def read(path: Path) -> str:
    return path.read_text(errors="replace")


async def until(what: str, check: object, timeout_s: float, logs: Path) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s} s\n{pilot_logs(logs)}"
        await asyncio.sleep(0.3)


async def test_a_pilot_warned_by_slurm_lets_the_job_that_fits_in_the_grace_finish(
    live_server: LiveServer, slurm_cluster: SlurmCluster, shared_dir: Path
) -> None:
    live = live_server
    name = f"g{uuid.uuid4().hex[:8]}"
    config = write_config(live, shared_dir, name, live.write_secret(f"{name}.token", await live.token(Role.SITE, name)))
    site = load_site_config(config)
    scheduler = SlurmScheduler(site, LocalRunner(), env=slurm_cluster.env)
    meta = shared_dir / "scratch" / "pilots-meta"
    marker = shared_dir / "go"
    try:
        async with live.api(await live.token(Role.USER, "alice")) as api:
            finisher, long_ = await api.submit(
                [  # by their walltimes, when warned: one will end within the grace, one would not
                    JobSpec(script=f"until [ -e {marker} ]; do sleep 0.2; done", cpus=1, memory_mb=100, walltime_s=200),
                    JobSpec(script="exec sleep 900", cpus=1, memory_mb=100, walltime_s=500),
                ]
            )
            report = await client_cli(slurm_cluster, shared_dir, "once", str(config))
            [batch_id] = report["submitted"]  # type: ignore[misc]
            script = (meta / f"glidein-{name}-{next(iter(await pilot_ids(scheduler)))}" / "pilot.sbatch").read_text()
            assert f"#SBATCH --signal=B:TERM@{GRACE_S}\n" in script
            assert f"--signal-grace {GRACE_S}s" in script

            async def both_running() -> bool:
                return all([(await api.get_job(j)).state is JobState.RUNNING for j in (finisher, long_)])

            await until("both jobs running", both_running, 40, meta)

            # Slurm suspends the pilot: the client counts it apart from the queued ones.
            await slurm(slurm_cluster, "scontrol", "suspend", batch_id)
            try:
                report = await client_cli(slurm_cluster, shared_dir, "once", str(config))
            finally:
                await slurm(slurm_cluster, "scontrol", "resume", batch_id)
            assert (report["suspended"], report["queued"], report["running"]) == (1, 0, 0), report

            # Bring the time limit near: slurmctld sends the warning at its next time-limit check
            # (every 30 s), up to 30 s early; without --signal it would only end the job at the end.
            end = time.time() + GRACE_S + 20
            await slurm(slurm_cluster, "scontrol", "update", f"JobId={batch_id}", f"EndTime=now+{GRACE_S + 20}")
            err = meta / f"glidein-{name}-{(await pilot_ids(scheduler))[0]}" / "pilot.err"

            async def warned() -> bool:
                return "stopping: received SIGTERM" in err.read_text(errors="replace")

            await until("the pilot warned", warned, 45, meta)
            warned_at = time.time()
            assert warned_at < end, "the warning came with the time limit, not before it"
            marker.touch()  # the first job ends now, within the grace

            async def finished() -> bool:
                return (await api.get_job(finisher)).state in (JobState.DONE, JobState.FAILED)

            await until("the job that fits finished", finished, 20, meta)
            assert (await api.get_job(finisher)).state is JobState.DONE, err.read_text()

            async def interrupted() -> bool:
                return bool((attempts := await api.attempts(long_)) and attempts[0].outcome is not None)

            await until("the long job interrupted", interrupted, 20, meta)
            [attempt] = await api.attempts(long_)
            assert attempt.outcome == "interrupted" and "received SIGTERM" in (attempt.reason or ""), attempt
            view = await api.get_job(long_)
            assert view.state is JobState.IDLE and view.retries_used == 0  # back in the queue, no retry used
            assert f"jobs that end within {GRACE_S} s finish" in err.read_text()

            async def pilot_left() -> bool:
                fields = scontrol_fields(await slurm(slurm_cluster, "scontrol", "show", "job", batch_id))
                return fields.get("JobState") not in ("RUNNING", "COMPLETING")

            await until("the pilot left", pilot_left, 30, meta)
            fields = scontrol_fields(await slurm(slurm_cluster, "scontrol", "show", "job", batch_id))
            assert fields["JobState"] == "COMPLETED", fields  # it left by itself, before Slurm's kill
    finally:
        await end_pilots(scheduler)


async def pilot_ids(scheduler: SlurmScheduler) -> list[int]:
    return [p.pilot_id for p in await scheduler.status()]
