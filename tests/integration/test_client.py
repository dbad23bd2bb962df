"""The site client against a real server: real cycles, real local pilots, real jobs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from glidein_client.site.client import CycleReport, SiteClient, pilot_command
from glidein_client.site.config import SiteConfig, load_site_config
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.schedulers.base import PilotJob, PilotLaunch, PilotState
from glidein_client.site.schedulers.local import LocalScheduler
from glidein_client.wire.errors import SchedulerError
from glidein_client.wire.schema import JobSpec, JobState, PilotRegister, Resources, Role
from tests.conftest import LiveServer

SITE = "local"


def write_config(tmp_path: Path, url: str, token_file: Path, **overrides: str) -> Path:
    values = {
        "name": SITE,
        "url": url,
        "token": str(token_file),
        "scratch": str(tmp_path / "site-scratch"),
        "cycle_s": "1",
        "max_pilots": "2",
        "max_idle": "2",
        "max_submit": "2",
        "idle": "3s",
        **overrides,
    }
    text = """\
[site]
name = "{name}"
server_url = "{url}"
token_file = "{token}"
scratch_dir = "{scratch}"
cycle_s = {cycle_s}

[pilot]
cpus = 1
memory = "512M"
disk = "200M"
walltime = "10m"
idle_timeout = "{idle}"

[limits]
max_pilots = {max_pilots}
max_idle_pilots = {max_idle}
max_submit_per_cycle = {max_submit}
""".format(**values)
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


async def site_config(live: LiveServer, tmp_path: Path, **overrides: str) -> SiteConfig:
    token = live.write_secret("site.token", await live.token(Role.SITE, SITE))
    return load_site_config(write_config(tmp_path, overrides.pop("url", live.url), token, **overrides))


@pytest.fixture
def reap_pilots(tmp_path: Path) -> Iterator[None]:
    """Leave no local pilot process behind."""
    yield
    for pid_file in tmp_path.glob("site-scratch/local-batch/*/pid"):
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)


async def submit_jobs(live: LiveServer, n: int, argv: list[str]) -> list[int]:
    async with live.api(await live.token(Role.USER, "alice")) as api:
        spec = JobSpec(argv=argv, cpus=1, memory_mb=64, disk_mb=10, walltime_s=60)
        return await api.submit([spec] * n)


async def job_states(live: LiveServer, ids: list[int]) -> dict[int, JobState]:
    async with live.api(live.operator_token) as api:
        return {j.id: j.state for j in (await api.list_jobs(ids=ids)).jobs}


def token_modes(site: SiteConfig) -> list[int]:
    """The modes of the pilots' directories, and of their tokens while still on disk (each pilot
    removes its own once it has read it)."""
    dirs = [d for d in Path(site.site.scratch_dir).glob("pilots-meta/*") if d.is_dir()]
    tokens = [d / "token" for d in dirs if (d / "token").exists()]
    return [p.stat().st_mode & 0o777 for p in dirs] + [
        0o600 if (t.stat().st_mode & 0o777) == 0o600 else 0 for t in tokens
    ]


def pilot_logs(site: SiteConfig) -> str:
    base = Path(site.site.scratch_dir) / "local-batch"
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')}" for p in sorted(base.glob("*/std*")))


async def test_cycles_start_pilots_that_run_the_jobs(
    live_server: LiveServer, tmp_path: Path, reap_pilots: None
) -> None:
    site = await site_config(live_server, tmp_path)
    ids = await submit_jobs(live_server, 3, ["sh", "-c", "echo hello"])
    reports: list[CycleReport] = []
    async with SiteClient(site) as client:
        assert isinstance(client.scheduler, LocalScheduler)
        first = await client.cycle()
        reports.append(first)
        assert first.demand_pilots >= 1
        assert len(first.submitted) == min(first.demand_pilots, 2)
        assert all(b.startswith("local-") for b in first.submitted)
        assert first.removed == ()
        # the pilot token was written for the pilot, readable by its owner only
        modes = token_modes(site)
        assert modes[: len(first.submitted)] == [0o700] * len(first.submitted)
        assert all(m == 0o600 for m in modes[len(first.submitted) :])

        deadline = time.monotonic() + 90
        while True:
            states = await job_states(live_server, ids)
            if all(s is JobState.DONE for s in states.values()):
                break
            assert time.monotonic() < deadline, f"jobs not done: {states}\n{pilot_logs(site)}"
            assert not any(s.final and s is not JobState.DONE for s in states.values()), pilot_logs(site)
            await asyncio.sleep(1)
            reports.append(await client.cycle())

        assert sum(len(r.submitted) for r in reports) <= 2 + 2  # never beyond the limits
        assert any(r.running for r in reports) or len(reports) == 1

        # with the work done, the pilots leave by themselves (idle timeout) and the client
        # reports them to the server as done
        deadline = time.monotonic() + 60
        while True:
            report = await client.cycle()
            assert report.submitted == (), report
            if report.running == 0 and report.queued == 0:
                break
            assert time.monotonic() < deadline, pilot_logs(site)
            await asyncio.sleep(1)
        pilots = await client.scheduler.status()
        assert pilots and all(p.state is PilotState.DONE for p in pilots), pilots
        assert report.demand_pilots == 0


class QueueOnlyScheduler:
    """A batch system whose pilots never start: they stay queued until cancelled."""

    name = "queue-only"

    def __init__(self) -> None:
        self.jobs: dict[str, PilotJob] = {}
        self.launches: list[PilotLaunch] = []
        self.cancelled: list[str] = []
        self.fail_submit_after: int | None = None

    def render(self, launch: PilotLaunch) -> str:
        return " ".join(launch.pilot_argv)

    async def submit(self, launch: PilotLaunch) -> str:
        if self.fail_submit_after is not None and len(self.launches) >= self.fail_submit_after:
            raise SchedulerError(
                "sbatch failed: Invalid account",
                command=["sbatch", "pilot.sh"],
                exit_code=1,
                stderr="sbatch: error: Invalid account or account/partition combination\n",
            )
        self.launches.append(launch)
        batch_id = f"q{len(self.launches)}"
        self.jobs[batch_id] = PilotJob(batch_id, launch.pilot_id, PilotState.QUEUED, submitted_at=time.time())
        return batch_id

    async def status(self) -> list[PilotJob]:
        return list(self.jobs.values())

    async def cancel(self, batch_ids: list[str]) -> None:
        for b in batch_ids:
            if b in self.jobs:
                self.cancelled.append(b)
                job = self.jobs[b]
                self.jobs[b] = PilotJob(b, job.pilot_id, PilotState.CANCELLED, submitted_at=job.submitted_at)


async def test_demand_gone_removes_queued_pilots(live_server: LiveServer, tmp_path: Path) -> None:
    site = await site_config(live_server, tmp_path, max_pilots="5", max_idle="5", max_submit="5")
    ids = await submit_jobs(live_server, 3, ["true"])
    sched = QueueOnlyScheduler()
    async with SiteClient(site, scheduler=sched) as client:
        first = await client.cycle()
        assert first.demand_pilots == 3
        assert first.submitted == ("q1", "q2", "q3")
        # the launch carries the complete pilot command and a token file written for it
        launch = sched.launches[0]
        assert launch.pilot_argv == pilot_command(site, launch.workdir)
        assert (await asyncio.to_thread(Path(launch.token_file).read_text)).strip()
        assert launch.tag == Path(launch.workdir).name

        again = await client.cycle()  # queued pilots count against the demand
        assert (again.queued, again.submitted, again.removed) == (3, (), ())

        async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
            for job_id in ids[:2]:
                await api.cancel(job_id)
        fewer = await client.cycle()
        assert fewer.demand_pilots == 1
        assert fewer.removed == ("q3", "q2")  # newest first
        for job_id in ids[2:]:
            async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
                await api.cancel(job_id)
        gone = await client.cycle()
        assert gone.demand_pilots == 0
        assert gone.removed == ("q1",)
        assert sched.cancelled == ["q3", "q2", "q1"]
        # the server hears of the cancelled pilots: they are no longer pending there
        final = await client.cycle()
        assert (final.queued, final.running, final.submitted, final.removed) == (0, 0, (), ())


async def test_failed_submit_stops_the_cycle_with_a_plain_error(
    live_server: LiveServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = await site_config(live_server, tmp_path, max_pilots="5", max_idle="5", max_submit="5")
    await submit_jobs(live_server, 3, ["true"])
    sched = QueueOnlyScheduler()
    sched.fail_submit_after = 1
    caplog.set_level(logging.INFO, logger="glidein_client")
    async with SiteClient(site, scheduler=sched) as client:
        with pytest.raises(SchedulerError) as info:
            await client.cycle()
    err = info.value
    assert str(err).startswith("The queue-only scheduler failed: sbatch failed: Invalid account")
    assert "1 of 3 pilot(s) submitted this cycle" in str(err)
    assert "sbatch: error" not in str(err)  # stderr goes to the log, not into the message
    report = err.fields["report"]
    assert isinstance(report, CycleReport) and report.submitted == ("q1",)
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        "command: sbatch pilot.sh | exit code: 1 | stderr: sbatch: error: Invalid account" in line for line in lines
    ), lines
    assert any(line.startswith(f"site {SITE}: demand 3 pilot(s)") for line in lines), lines


class Proxy:
    """A TCP forwarder in front of the server, to take the server away and bring it back."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._conns):
            w.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._conns.update((writer, up_writer))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._conns.difference_update((writer, up_writer))


@contextlib.asynccontextmanager
async def proxy_for(live: LiveServer) -> AsyncIterator[Proxy]:
    port = int(live.url.rsplit(":", 1)[1])
    proxy = Proxy(port)
    await proxy.up()
    try:
        yield proxy
    finally:
        await proxy.down()


@pytest.mark.slow
async def test_run_forever_backs_off_while_the_server_is_down(
    live_server: LiveServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="glidein_client")
    async with proxy_for(live_server) as proxy:
        site = await site_config(live_server, tmp_path, url=f"http://127.0.0.1:{proxy.port}", cycle_s="30")
        attempts: list[float] = []

        class CountingClient(SiteClient):
            async def cycle(self) -> CycleReport:
                attempts.append(time.monotonic())
                return await super().cycle()

        stop = asyncio.Event()
        async with CountingClient(site, scheduler=QueueOnlyScheduler()) as client:
            await proxy.down()
            task = asyncio.create_task(client.run_forever(stop=stop))
            await until(lambda: len(attempts) == 3, timeout_s=10)  # tries at 0, 1 and 3 s
            await proxy.up()
            await until(lambda: len(attempts) == 4, timeout_s=10)  # the next try, 4 s later, succeeds
            gaps = [b - a for a, b in itertools.pairwise(attempts)]
            assert [round(g) for g in gaps] == [1, 2, 4], gaps
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.wait_for(task, 5)

    lines = [r.getMessage() for r in caplog.records if r.name == "glidein_client.site.client"]
    down = [line for line in lines if "Cannot reach the glidein server" in line]
    assert len(down) == 1, lines
    assert "Retrying with back-off up to 30 s" in down[0]
    back = [line for line in lines if "answers again" in line]
    assert len(back) == 1, lines
    assert lines.index(down[0]) < lines.index(back[0])
    assert lines[-1] == f"site {SITE}: stopped"


async def until(check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_run_forever_returns_when_stopped(live_server: LiveServer, tmp_path: Path) -> None:
    site = await site_config(live_server, tmp_path, cycle_s="30")
    stop = asyncio.Event()
    async with SiteClient(site, scheduler=QueueOnlyScheduler()) as client:
        task = asyncio.create_task(client.run_forever(stop=stop))
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 5)


# --- the command line, as a subprocess next to the live server ---------------------------------------


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "glidein_client.site.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_check_passes_against_the_server(live_server: LiveServer, tmp_path: Path) -> None:
    site = await site_config(live_server, tmp_path)
    code, out, err = await cli("check", site.path)
    assert code == 0, out + err
    lines = out.splitlines()
    names = [line.split(":")[0] for line in lines]
    assert names == [
        "ok   config",
        "ok   token file",
        "ok   command timeout",
        "ok   scratch dir",
        "ok   server",
        "ok   site token",
    ], out

    code, out, err = await cli("check", site.path, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["ok"] is True
    assert [c["name"] for c in result["checks"]][-1] == "site token"


async def test_cli_check_reports_a_bad_token(live_server: LiveServer, tmp_path: Path) -> None:
    token = live_server.write_secret("wrong.token", "not-a-token")
    path = write_config(tmp_path, live_server.url, token)
    code, out, err = await cli("check", str(path))
    assert code == 1
    assert "ok   server:" in out
    assert "FAIL site token:" in out
    assert "Traceback" not in out + err


async def test_cli_check_reports_an_unreachable_server(tmp_path: Path) -> None:
    token = tmp_path / "site.token"
    token.write_text("x\n")
    token.chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_config(tmp_path, f"http://127.0.0.1:{port}", token)
    code, out, err = await cli("check", str(path))
    assert code == 1
    assert "FAIL server: Cannot reach the glidein server" in out
    assert "site token" not in out  # nothing more to check without a server


async def test_cli_once_json(live_server: LiveServer, tmp_path: Path) -> None:
    site = await site_config(live_server, tmp_path, max_submit="0")
    await submit_jobs(live_server, 2, ["true"])
    code, out, err = await cli("once", site.path, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["site"] == SITE
    assert report["demand_pilots"] == 2
    assert report["submitted"] == []
    assert "limits.max_submit_per_cycle=0" in " ".join(report["reasons"])
    assert f"site {SITE}: demand 2 pilot(s)" in err  # the one log line of the cycle

    code, out, err = await cli("once", site.path)
    assert code == 0, err
    assert out.startswith(f"site {SITE}: demand 2 pilot(s), 0 queued, 0 running\nsubmitted 0: -\n")


async def test_cli_errors_are_one_plain_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[site]\nname = "x"\ncolour = "red"\n')
    code, out, err = await cli("once", str(bad))
    assert code == 1
    assert err.startswith(f"error: The site config {bad} is invalid")
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

    code, out, err = await cli("once", str(bad), env={"GLIDEIN_DEBUG": "1"})
    assert code == 1
    assert "Traceback" in err

    code, out, err = await cli("once", str(tmp_path / "absent.toml"))
    assert (code, err.strip()) == (
        1,
        f"error: Site config {tmp_path / 'absent.toml'} does not exist. See site_configs/local.toml.",
    )


async def test_cli_check_bad_config_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[site]\nname = "x"\nserver_url = "http://h"\ntoken_file = "/t"\nscratch_dir = "/s"\n[pilot]\nmemory = "2Q"\n'
    )
    code, out, err = await cli("check", str(bad))
    assert code == 1
    assert out.startswith("FAIL config: Site config")
    assert "pilot.memory" in out


def test_local_runner_is_the_default(tmp_path: Path) -> None:
    token = tmp_path / "t"
    site = load_site_config(write_config(tmp_path, "http://127.0.0.1:1", token))
    client = SiteClient(site)
    assert isinstance(client.runner, LocalRunner)
    assert isinstance(client.scheduler, LocalScheduler)
    assert not token.exists()  # nothing was read or written by the constructor


async def test_cli_run_stops_on_sigterm(live_server: LiveServer, tmp_path: Path) -> None:
    site = await site_config(live_server, tmp_path, max_submit="0", cycle_s="30")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "glidein_client.site.cli",
        "run",
        site.path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen: list[str] = []
    try:
        while not any(f"site {SITE}: demand" in line for line in seen):
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, "".join(seen)
            seen.append(line.decode())
        second = await cli("once", site.path)  # a second client on the same config is refused
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = seen + err.decode().splitlines(keepends=True)
    assert proc.returncode == 0, "".join(lines)
    assert out == b""
    assert (
        second[0] == 1
        and f"Another glidein-client already runs {site.path} (site {SITE}): pid {proc.pid}." in second[2]
    )
    assert any("received SIGTERM, stopping after the current cycle" in line for line in lines)
    assert lines[-1].rstrip().endswith(f"INFO site {SITE}: stopped")
    assert all(" INFO " in line or " WARNING " in line for line in lines), "".join(lines)


async def test_cli_check_reports_an_open_token_file_and_still_checks_the_server(
    live_server: LiveServer, tmp_path: Path
) -> None:
    site = await site_config(live_server, tmp_path)
    os.chmod(site.site.token_file, 0o644)
    code, out, err = await cli("check", site.path)
    assert code == 1
    lines = out.splitlines()
    assert lines[1].startswith(f"FAIL token file: The site token file {site.site.token_file} (named in")
    assert f"Run: chmod 600 {site.site.token_file}" in lines[1]
    assert f"ok   server: {live_server.url} answers (API v1)" in lines
    assert not any(line.split(":")[0].endswith("site token") for line in lines)


async def test_cli_status_shows_back_off_and_what_a_cycle_would_do_and_changes_nothing(
    live_server: LiveServer, tmp_path: Path, reap_pilots: None
) -> None:
    site = await site_config(live_server, tmp_path)
    ids = await submit_jobs(live_server, 2, ["true"])
    async with live_server.api(site.read_token()) as api:
        await api.demand(SITE, site.shape)
        grants = [await api.new_pilot(SITE) for _ in range(4)]
        await api.pilot_states(SITE, {str(g.pilot_id): "failed" for g in grants[:3]})  # never reached the server

    code, out, err = await cli("status", site.path, "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["site"] == SITE and status["scheduler"] == "local"
    assert status["demand"]["pilots"] == 2 and status["pilots"] == {}
    assert status["backoff"]["active"] is True and status["backoff"]["start_failures"] == 3
    assert 0 < status["backoff"]["backoff_s"] <= 60
    assert status["next_cycle"]["submit"] == 0
    assert status["next_cycle"]["reasons"][0].startswith("submitting none: back-off: 3 pilots in a row failed at start")

    code, out, err = await cli("status", site.path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"site {SITE} (local) at {live_server.url}"
    assert lines[1].startswith("  demand     2 pilot(s) for 2 job(s), 2 cpus")
    assert lines[2] == "  pilots     none (its own, in the batch system)"
    assert lines[3].startswith("  back-off   on: 3 pilot(s) in a row ended before taking work; no submissions for ")
    assert lines[4].startswith("  next cycle would submit 0 and remove 0 (submitting none: back-off: ")
    assert set((await job_states(live_server, ids)).values()) == {JobState.IDLE}  # status submitted nothing
    assert await LocalScheduler(site, LocalRunner()).status() == []

    # Out of back-off (a pilot started), a cycle submits pilots, and status lists them.
    async with live_server.api(grants[3].token) as pilot:
        await pilot.register(PilotRegister(resources=Resources(cpus=1, memory_mb=512), end_time=time.time() + 60))
    code, out, err = await cli("once", site.path)
    assert code == 0 and "submitted 2:" in out, out + err
    code, out, err = await cli("status", site.path, "--json")
    status = json.loads(out)
    assert status["backoff"] == {"active": False, "start_failures": 0, "backoff_s": 0.0}
    assert sum(status["pilots"].values()) == 2, status  # listed by the scheduler, whatever their state now
