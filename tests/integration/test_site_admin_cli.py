"""The site admin's commands, through the real `glidein-client` with local pilots (real processes):
drain (no new pilots; running pilots finish their jobs and leave), resume, stop-pilots (each pilot
named, queued and running, removed through the scheduler's cancel), and `check`'s plain lines."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from glidein_client.wire.schema import JobSpec, JobState, Role
from tests.conftest import LiveServer

SITE = "adm"


def write_config(tmp_path: Path, url: str, token: Path, **pilot: str) -> Path:
    shape = {"idle_timeout": '"60s"', **pilot}
    path = tmp_path / "site.toml"
    path.write_text(
        f'[site]\nname = "{SITE}"\nurl = "{url}"\ntoken_file = "{token}"\nscratch_dir = "{tmp_path / "scratch"}"\n'
        '\n[pilot]\ncpus = 1\nmemory = "256M"\ndisk = "100M"\nwalltime = "10m"\nisolation = "none"\n'
        + "".join(f"{k} = {v}\n" for k, v in shape.items())
        + "\n[limits]\nmax_pilots = 2\nmax_idle_pilots = 1\nmax_submit_per_cycle = 1\n"
    )
    return path


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The client's environment (its lock and state files under tmp_path); no pilot outlives the test."""
    yield {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    for pid_file in tmp_path.glob("scratch/local-batch/*/pid"):
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


async def client(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "glidein_client.site.cli", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s} s\n{read_logs(logs)}"
        await asyncio.sleep(0.2)


def read_logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("scratch/local-batch/*/std*")))


def pilot_alive(tmp_path: Path, tag: str) -> bool:
    return not (tmp_path / "scratch" / "local-batch" / tag / "exitcode").exists()


async def test_drain_lets_the_running_job_finish_then_the_pilot_leaves_and_resume_submits_again(
    live_server: LiveServer, tmp_path: Path, env: dict[str, str]
) -> None:
    live = live_server
    config = str(write_config(tmp_path, live.url, live.write_secret("s.token", await live.token(Role.SITE, SITE))))
    go = tmp_path / "go"
    async with live.api(await live.token(Role.USER, "alice")) as api:
        spec = JobSpec(script=f"until [ -e {go} ]; do sleep 0.1; done", cpus=1, memory_mb=64, walltime_s=120)
        (running,) = await api.submit([spec])
        code, out, err = await client(env, "once", config, "--json")
        assert code == 0 and len(json.loads(out)["submitted"]) == 1, err
        tag = f"glidein-{SITE}-1"

        async def job_running() -> bool:
            return (await api.get_job(running)).state is JobState.RUNNING

        await until("the job runs", job_running, 30, tmp_path)

        code, out, err = await client(env, "drain", config)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == f"site {SITE}: draining: no new pilots until `glidein-client resume {config}`"
        assert lines[1].startswith(f"pilot {tag} (local local-") and lines[1].endswith(
            ", running) finishes its jobs, then leaves"
        ), out

        async def pilot_told() -> bool:
            return "stopping: asked to drain by glidein-client drain" in read_logs(tmp_path)

        await until("the pilot drains", pilot_told, 20, tmp_path)
        (waiting,) = await api.submit([JobSpec(argv=["true"], cpus=1, memory_mb=64, walltime_s=60)])
        code, out, err = await client(env, "once", config, "--json")
        report = json.loads(out)
        assert report["submitted"] == [] and any("draining (glidein-client drain)" in r for r in report["reasons"])
        code, out, err = await client(env, "status", config)
        assert "  draining   yes (glidein-client drain)" in out, out
        assert pilot_alive(tmp_path, tag)  # its job still runs

        go.touch()

        async def pilot_gone() -> bool:
            return not pilot_alive(tmp_path, tag)

        await until("the pilot leaves", pilot_gone, 20, tmp_path)
        assert (await api.get_job(running)).state is JobState.DONE
        assert (await api.get_job(waiting)).state is JobState.IDLE  # the drained pilot took no new job

        code, out, err = await client(env, "resume", config)
        assert (code, out.strip()) == (0, f"site {SITE}: resumed: pilots are submitted again as the demand asks")
        code, out, err = await client(env, "once", config, "--json")
        assert len(json.loads(out)["submitted"]) == 1, out + err

        async def done() -> bool:
            return (await api.get_job(waiting)).state is JobState.DONE

        await until("the waiting job runs after resume", done, 30, tmp_path)


async def test_stop_pilots_removes_each_pilot_by_name_and_its_job_goes_back(
    live_server: LiveServer, tmp_path: Path, env: dict[str, str]
) -> None:
    live = live_server
    config = str(write_config(tmp_path, live.url, live.write_secret("s.token", await live.token(Role.SITE, SITE))))
    async with live.api(await live.token(Role.USER, "alice")) as api:
        (job,) = await api.submit([JobSpec(script="exec sleep 300", cpus=1, memory_mb=64, walltime_s=400)])
        code, out, err = await client(env, "once", config, "--json")
        assert code == 0, err

        async def job_running() -> bool:
            return (await api.get_job(job)).state is JobState.RUNNING

        await until("the job runs", job_running, 30, tmp_path)
        code, out, err = await client(env, "stop-pilots", config)
        assert code == 0, err
        [line] = out.splitlines()
        assert line.startswith(f"removed pilot glidein-{SITE}-1 (local local-") and line.endswith(", running)"), out

        async def pilot_gone() -> bool:
            return not pilot_alive(tmp_path, f"glidein-{SITE}-1")

        await until("the pilot ends", pilot_gone, 20, tmp_path)

        async def requeued() -> bool:
            return bool((a := await api.attempts(job)) and a[0].outcome is not None)

        await until("the job's attempt ends", requeued, 20, tmp_path)
        assert (await api.attempts(job))[0].outcome in ("interrupted", "lost")
        assert (await api.get_job(job)).retries_used == 0
        code, out, err = await client(env, "stop-pilots", config)
        assert (code, out.strip()) == (0, f"site {SITE}: no pilots in the batch system")


async def test_check_speaks_in_lines_for_a_missing_ca_a_scratch_it_cannot_write_and_an_unknown_scheduler(
    tmp_path: Path, env: dict[str, str]
) -> None:
    token = tmp_path / "t"
    token.write_text("x\n")
    token.chmod(0o600)
    config = write_config(tmp_path, "https://127.0.0.1:1", token)
    text = config.read_text()
    config.write_text(text.replace("[site]\n", f'[site]\nca_file = "{tmp_path / "ca.pem"}"\n'))
    code, out, err = await client(env, "check", str(config))
    assert code == 1 and err == "", err
    assert [line.split(":")[0] for line in out.splitlines()] == [
        "ok   config",
        "ok   token file",
        "ok   command timeout",
        "ok   scratch dir",
        "FAIL ca file",
    ], out
    assert f"Cannot read the server's CA {tmp_path / 'ca.pem'} (site.ca_file in {config})" in out

    blocker = tmp_path / "file"
    blocker.write_text("")
    config.write_text(text.replace(str(tmp_path / "scratch"), str(blocker / "scratch")))
    code, out, err = await client(env, "check", str(config))
    assert f"FAIL scratch dir: Cannot write in {blocker / 'scratch'} (site.scratch_dir in {config}): " in out, out
    assert ".tmp" not in out and ".glidein-check" not in out

    config.write_text(text.replace("[pilot]", 'scheduler = "sge"\n[pilot]', 1))
    code, out, err = await client(env, "check", str(config))
    assert out.strip() == (
        f"FAIL config: Site config {config}: site.scheduler is 'sge', which glidein does not know. "
        "Choose one of: local, slurm, pbs, htcondor, lsf."
    )
