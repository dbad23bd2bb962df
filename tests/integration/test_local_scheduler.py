"""The local scheduler with real processes: queued, running, done, failed, cancelled, timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import msgspec
import psutil
import pytest

from glidein_client.site.client import pilot_command
from glidein_client.site.config import SiteConfig, parse_site_config
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.schedulers import make_scheduler
from glidein_client.site.schedulers.base import PilotJob, PilotLaunch, PilotState
from glidein_client.site.schedulers.local import LocalScheduler
from glidein_client.wire.errors import ConfigError, SchedulerError

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "local.sh"


def make_site(scratch: Path | str, *, walltime_s: int = 3600, **batch: object) -> SiteConfig:
    site = parse_site_config(
        {
            "site": {
                "name": "test",
                "server_url": "http://127.0.0.1:1",
                "token_file": "/dev/null",
                "scratch_dir": str(scratch),
            },
            "batch": batch,
        },
        "test.toml",
    )
    # below the one-minute minimum of a config file, to see the walltime end a pilot quickly
    return msgspec.structs.replace(site, shape=msgspec.structs.replace(site.shape, walltime_s=walltime_s))


def launch(site: SiteConfig, pilot_id: int, *argv: str) -> PilotLaunch:
    workdir = os.path.join(site.site.scratch_dir, "pilots-meta", f"glidein-{site.name}-{pilot_id}")
    return PilotLaunch(pilot_id, site, workdir, os.path.join(workdir, "token"), tuple(argv))


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # leave no pilot process behind, whatever the test did
    for pid_file in tmp_path.glob("local-batch/*/pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, ValueError):
            pass


async def wait_for(
    sched: LocalScheduler, pilot_id: int, want: Callable[[PilotJob], bool], timeout_s: float = 15.0
) -> PilotJob:
    deadline = time.monotonic() + timeout_s
    last: PilotJob | None = None
    while time.monotonic() < deadline:
        for job in await sched.status():
            if job.pilot_id == pilot_id:
                last = job
                if want(job):
                    return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"pilot {pilot_id} never reached the wanted state; last seen: {last}")


def state(s: PilotState) -> Callable[[PilotJob], bool]:
    return lambda job: job.state is s


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


# --- rendering -------------------------------------------------------------------------------------


def golden_launch() -> PilotLaunch:
    site = make_site(
        "/scratch/glidein sites",
        walltime_s=43200,
        python="/opt/glidein/bin/python",
        env_setup=["module load python/3.11", ". /opt/glidein/env.sh"],
    )
    site = msgspec.structs.replace(site, site=msgspec.structs.replace(site.site, ca_file="/etc/glidein/ca.pem"))
    workdir = "/scratch/glidein sites/pilots-meta/glidein-test-42"
    return PilotLaunch(42, site, workdir, f"{workdir}/token", pilot_command(site, workdir))


def test_render_matches_golden_file() -> None:
    sched = LocalScheduler(golden_launch().site)
    assert sched.render(golden_launch()) == GOLDEN.read_text()


def test_render_quotes_the_pilot_command(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    text = LocalScheduler(site).render(launch(site, 1, "echo", "$(touch pwned)", "a b"))
    assert "timeout --foreground --signal=TERM --kill-after=30 3600 echo '$(touch pwned)' 'a b' &" in text


def test_factory_makes_the_local_scheduler(tmp_path: Path) -> None:
    sched = make_scheduler(make_site(tmp_path), LocalRunner())
    assert isinstance(sched, LocalScheduler)
    assert sched.name == "local"
    assert not (tmp_path / "local-batch").exists()  # the constructor does no I/O


@pytest.mark.parametrize(
    ("name", "cls"),
    [("slurm", "SlurmScheduler"), ("pbs", "PbsScheduler"), ("htcondor", "HTCondorScheduler")],
)
def test_factory_makes_every_backend(tmp_path: Path, name: str, cls: str) -> None:
    site = make_site(tmp_path)
    site = msgspec.structs.replace(site, site=msgspec.structs.replace(site.site, scheduler=name))
    sched = make_scheduler(site, LocalRunner())
    assert (type(sched).__name__, sched.name) == (cls, name)


def test_factory_refuses_an_unknown_scheduler(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    site = msgspec.structs.replace(site, site=msgspec.structs.replace(site.site, scheduler="sge"))
    with pytest.raises(ConfigError, match="site.scheduler 'sge' is not known"):
        make_scheduler(site, LocalRunner())


# --- real processes -------------------------------------------------------------------------------


async def test_done_pilot_and_its_files(scratch: Path) -> None:
    site = make_site(scratch)
    sched = LocalScheduler(site)
    pl = launch(site, 1, "sh", "-c", "echo out; echo err >&2")
    batch_id = await sched.submit(pl)
    path = scratch / "local-batch" / "glidein-test-1"
    pid = int((path / "pid").read_text())
    assert batch_id == f"local-{pid}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert (path / "pilot.sh").read_text() == sched.render(pl)

    job = await wait_for(sched, 1, state(PilotState.DONE))
    assert job.batch_id == batch_id
    assert job.native_state == "COMPLETED"
    assert job.submitted_at is not None and abs(job.submitted_at - time.time()) < 30
    assert (path / "stdout").read_text() == "out\n"
    assert (path / "stderr").read_text() == "err\n"
    assert (path / "exitcode").read_text() == "0\n"
    assert float((path / "started").read_text()) <= time.time()
    assert stat.S_IMODE((path / "stdout").stat().st_mode) == 0o600
    # the finished process was reaped: no zombie is left behind
    await eventually(lambda: not psutil.pid_exists(pid))


async def test_true_is_done(scratch: Path) -> None:
    site = make_site(scratch)
    sched = LocalScheduler(site)
    await sched.submit(launch(site, 7, "true"))
    assert (await wait_for(sched, 7, lambda j: not j.state.active)).state is PilotState.DONE


async def test_failed_pilot_reports_exit_code(scratch: Path) -> None:
    site = make_site(scratch)
    sched = LocalScheduler(site)
    await sched.submit(launch(site, 2, "sh", "-c", "exit 3"))
    job = await wait_for(sched, 2, lambda j: not j.state.active)
    assert job.state is PilotState.FAILED
    assert job.native_state == "FAILED"
    assert job.reason == "exit code 3"


async def test_running_then_cancelled_stops_the_pilot(scratch: Path) -> None:
    site = make_site(scratch)
    sched = LocalScheduler(site)
    batch_id = await sched.submit(launch(site, 3, "sh", "-c", "echo $$ > inner.pid; exec sleep 30"))
    job = await wait_for(sched, 3, state(PilotState.RUNNING))
    assert job.batch_id == batch_id
    inner = scratch / "local-batch" / "glidein-test-3" / "inner.pid"
    await eventually(inner.exists)
    inner_pid = int(inner.read_text())
    assert psutil.pid_exists(inner_pid)

    await sched.cancel([batch_id])
    job = await wait_for(sched, 3, state(PilotState.CANCELLED))
    assert job.native_state == "CANCELLED"
    assert (scratch / "local-batch" / "glidein-test-3" / "cancelled").exists()
    # the TERM reached the pilot itself, not only the script around it
    await eventually(lambda: not psutil.pid_exists(inner_pid))


async def test_walltime_ends_pilot_as_timeout(scratch: Path) -> None:
    site = make_site(scratch, walltime_s=1)
    sched = LocalScheduler(site)
    await sched.submit(launch(site, 4, "sleep", "30"))
    job = await wait_for(sched, 4, lambda j: not j.state.active)
    assert job.state is PilotState.TIMEOUT
    assert job.reason == "walltime of 1 s reached (exit code 124)"


async def test_pilot_ignoring_term_is_killed_and_counts_as_timeout(scratch: Path) -> None:
    site = make_site(scratch, walltime_s=1)
    sched = LocalScheduler(site, kill_after_s=1)
    await sched.submit(launch(site, 5, "sh", "-c", "trap '' TERM; sleep 20 & wait; wait"))
    job = await wait_for(sched, 5, lambda j: not j.state.active)
    assert job.state is PilotState.TIMEOUT
    assert "exit code 137" in job.reason


async def test_process_waiting_to_start_is_queued(scratch: Path) -> None:
    site = make_site(scratch)
    sched = LocalScheduler(site)
    path = scratch / "local-batch" / "glidein-test-6"
    path.mkdir(parents=True)
    proc = await asyncio.create_subprocess_exec("sleep", "30", start_new_session=True)
    try:
        (path / "pid").write_text(f"{proc.pid}\n")
        (path / "job.json").write_text(f'{{"pilot_id": 6, "submitted_at": {time.time()}, "walltime_s": 60}}')
        [job] = await sched.status()
        assert (job.pilot_id, job.state, job.native_state) == (6, PilotState.QUEUED, "PENDING")
        assert job.batch_id == f"local-{proc.pid}"
        (path / "started").write_text(f"{time.time():.0f}\n")
        [job] = await sched.status()
        assert job.state is PilotState.RUNNING
    finally:
        proc.kill()
        await proc.wait()
    [job] = await sched.status()
    assert job.state is PilotState.FAILED
    assert job.native_state == "LOST"
    assert "without writing an exit code" in job.reason


async def test_killed_script_is_failed(scratch: Path) -> None:
    site = make_site(scratch)
    sched = LocalScheduler(site)
    batch_id = await sched.submit(launch(site, 8, "sleep", "30"))
    await wait_for(sched, 8, state(PilotState.RUNNING))
    session = int(batch_id.removeprefix("local-"))
    members = [p for p in psutil.process_iter(["cmdline"]) if _session_of(p.pid) == session]
    assert ["sleep", "30"] in [p.info["cmdline"] for p in members]  # the pilot runs in the script's session ...
    os.killpg(session, signal.SIGKILL)
    job = await wait_for(sched, 8, lambda j: not j.state.active)
    assert (job.state, job.native_state) == (PilotState.FAILED, "LOST")
    gone, alive = psutil.wait_procs(members, timeout=5)
    assert alive == []  # ... and in its process group: killing the "job" leaves nothing running


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


async def test_cancel_ignores_unknown_and_finished_ids(scratch: Path) -> None:
    site = make_site(scratch)
    sched = LocalScheduler(site)
    await sched.cancel([])
    await sched.cancel(["local-999999999", "12345.slurm"])
    batch_id = await sched.submit(launch(site, 9, "true"))
    await wait_for(sched, 9, state(PilotState.DONE))
    await sched.cancel([batch_id])
    [job] = await sched.status()
    assert job.state is PilotState.DONE  # a cancel after the end changes nothing


async def test_status_lists_only_this_sites_pilots(scratch: Path) -> None:
    site = make_site(scratch)
    other = msgspec.structs.replace(site, site=msgspec.structs.replace(site.site, name="other"))
    await LocalScheduler(other).submit(launch(other, 1, "true"))
    (scratch / "local-batch" / "not-a-pilot").mkdir()
    assert await LocalScheduler(site).status() == []
    assert len(await LocalScheduler(other).status()) == 1


async def test_status_without_any_pilot_is_empty(scratch: Path) -> None:
    assert await LocalScheduler(make_site(scratch / "absent")).status() == []


async def test_directories_of_long_finished_pilots_are_removed(scratch: Path) -> None:
    site = make_site(scratch)
    sched = LocalScheduler(site, keep_finished_s=3600)
    await sched.submit(launch(site, 10, "true"))
    await wait_for(sched, 10, state(PilotState.DONE))
    path = scratch / "local-batch" / "glidein-test-10"
    hour_ago = time.time() - 3700
    os.utime(path / "exitcode", (hour_ago, hour_ago))
    assert await sched.status() == []
    assert not path.exists()


async def test_resubmitting_a_running_pilot_id_is_refused(scratch: Path) -> None:
    site = make_site(scratch)
    sched = LocalScheduler(site)
    await sched.submit(launch(site, 11, "sleep", "30"))
    with pytest.raises(SchedulerError, match="already runs"):
        await sched.submit(launch(site, 11, "sleep", "30"))


async def test_unwritable_scratch_is_a_scheduler_error(tmp_path: Path) -> None:
    site = make_site("/proc/glidein-cannot-write-here")
    with pytest.raises(SchedulerError, match="Cannot start pilot glidein-test-1"):
        await LocalScheduler(site).submit(launch(site, 1, "true"))


async def test_env_setup_runs_before_the_pilot(scratch: Path) -> None:
    site = make_site(scratch, env_setup=["GLIDEIN_TEST_SETUP=yes", "export GLIDEIN_TEST_SETUP"])
    sched = LocalScheduler(site)
    await sched.submit(launch(site, 12, "sh", "-c", 'echo "$GLIDEIN_TEST_SETUP"'))
    await wait_for(sched, 12, state(PilotState.DONE))
    assert (scratch / "local-batch" / "glidein-test-12" / "stdout").read_text() == "yes\n"
