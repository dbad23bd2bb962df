"""Chaos: SIGKILL the server at random moments of a 1,500-job run (and pilots mid-job), restart it,
then check every job finished exactly once with its output intact. Prints the counts and the
recovery time after a restart."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import GlideinError
from glidein_client.wire.schema import JobSpec, JobState, PilotShape
from glidein_server.settings import ServerSettings, StateDir

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

JOBS = 1500
SERVER_KILLS = 10
SCRIPT = 'echo "$GLIDEIN_JOB_ID" > out.txt'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Chaos:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state = StateDir(tmp / "server")
        self.server: subprocess.Popen[bytes] | None = None
        self.pilots: list[subprocess.Popen[bytes]] = []
        self.restarts: list[dict[str, float]] = []

    def cli(self, *args: str) -> dict[str, str]:
        out = subprocess.run(
            [sys.executable, "-m", "glidein_server.cli", "--dir", str(self.state.root), *args, "--json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return dict(json.loads(out))

    def start_server(self) -> None:
        log = open(self.tmp / "server.log", "ab")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "glidein_server.cli", "--dir", str(self.state.root), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill_server(self) -> None:
        assert self.server is not None
        os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait()

    async def wait_up(self) -> float:
        t0 = time.monotonic()
        async with ApiClient(self.url, None, timeout_s=2) as api:
            while True:
                try:
                    await api.health()
                    return time.monotonic() - t0
                except GlideinError:
                    assert self.server is not None and self.server.poll() is None, (
                        self.tmp / "server.log"
                    ).read_text()[-2000:]
                    await asyncio.sleep(0.02)

    def start_pilot(self, token: str, n: int) -> None:
        token_file = self.tmp / f"pilot-{n}.token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        log = open(self.tmp / f"pilot-{n}.log", "wb")
        self.pilots.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "glidein_client.pilot",
                    "run",
                    "--server-url",
                    self.url,
                    "--token-file",
                    str(token_file),
                    "--cpus",
                    "2",
                    "--memory-mb",
                    "2000",
                    "--disk-mb",
                    "1000",
                    "--walltime-s",
                    "3600",
                    "--idle-timeout-s",
                    "120",
                    "--scratch",
                    str(self.tmp / "scratch"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()

    def stop_all(self) -> None:
        for proc in [*self.pilots, *([self.server] if self.server else [])]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def progress_resumes(url: str, token: str, cap_s: float = 20.0) -> float:
    """Seconds from now until one more job is done (how long the system takes to work again)."""
    t0 = time.monotonic()
    async with ApiClient(url, token) as api:
        before = (await api.summary()).jobs.get("done", 0)
        while time.monotonic() - t0 < cap_s:
            counts = (await api.summary()).jobs
            if counts.get("done", 0) > before or counts.get("done", 0) >= JOBS:
                break
            await asyncio.sleep(0.02)
    return time.monotonic() - t0


@pytest.fixture
def chaos(tmp_path: Path) -> object:
    c = Chaos(tmp_path)
    yield c
    c.stop_all()


async def test_server_and_pilot_kills_lose_nothing_and_do_nothing_twice(chaos: Chaos) -> None:
    rng = random.Random(20261122)
    chaos.state.write(
        ServerSettings(
            port=chaos.port,
            lease_s=15.0,
            heartbeat_s=1.0,
            pilot_timeout_s=60.0,
            insecure_http=True,
            rate_user_per_s=0,  # the check reads every job's attempts and output: 4,000 requests
        )
    )  # plain HTTP on loopback: this test kills servers
    user_token = chaos.cli("user", "add", "chaos")["token"]
    site_token = chaos.cli("site", "add", "local")["token"]
    chaos.start_server()
    await chaos.wait_up()
    async with ApiClient(chaos.url, site_token) as site:
        await site.demand("local", PilotShape(cpus=2, memory_mb=2000, disk_mb=1000, walltime_s=3600))
        grants = [await site.new_pilot("local") for _ in range(4)]
    async with ApiClient(chaos.url, user_token) as api:
        ids = await api.submit(
            [
                JobSpec(script=SCRIPT, outputs=["out.txt"], memory_mb=100, disk_mb=1, walltime_s=120, max_retries=0)
                for _ in range(JOBS)
            ]
        )
    chaos.start_pilot(grants[0].token, 0)
    chaos.start_pilot(grants[1].token, 1)
    spare = iter(grants[2:])

    pilot_kills = 0
    for kill in range(SERVER_KILLS):
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        chaos.kill_server()
        if kill in (3, 7):  # also SIGKILL a pilot in the middle of its jobs, and replace it
            victim = chaos.pilots[kill // 4 - 1 if kill == 3 else -1]
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
            pilot_kills += 1
        await asyncio.sleep(rng.uniform(0.0, 0.5))
        chaos.start_server()
        up_s = await chaos.wait_up()
        if kill in (3, 7):
            chaos.start_pilot(next(spare).token, 2 + pilot_kills)
        chaos.restarts.append({"up_s": up_s, "resumed_s": await progress_resumes(chaos.url, user_token)})

    async with ApiClient(chaos.url, user_token, timeout_s=30) as api:
        deadline = time.monotonic() + 240
        while True:
            counts = (await api.summary()).jobs
            if sum(counts.get(s, 0) for s in ("done", "failed", "cancelled")) >= JOBS:
                break
            assert time.monotonic() < deadline, f"not finished: {counts}"
            await asyncio.sleep(0.5)
        jobs = []
        for offset in range(0, JOBS, 1000):
            jobs += (await api.list_jobs(limit=1000, offset=offset)).jobs
        lost = [j.id for j in jobs if j.state is not JobState.DONE]
        duplicated: list[int] = []
        corrupt: list[int] = []
        extra_attempts = 0
        gate = asyncio.Semaphore(16)

        async def check(job_id: int) -> None:
            nonlocal extra_attempts
            async with gate:
                attempts = await api.attempts(job_id)
                output = await api.fetch_output(job_id, "out.txt")
            extra_attempts += len(attempts) - 1
            if sum(a.outcome == "done" for a in attempts) != 1:
                duplicated.append(job_id)
            if output.decode().strip() != str(job_id):
                corrupt.append(job_id)

        await asyncio.gather(*(check(j.id) for j in jobs))  # every job: its attempts and its output
    report = {
        "jobs": len(ids),
        "server_kills": SERVER_KILLS,
        "pilot_kills": pilot_kills,
        "lost": len(lost),
        "duplicated": len(duplicated),
        "corrupt": len(corrupt),
        "extra_attempts": extra_attempts,
        "server_up_after_restart_s_max": round(max(r["up_s"] for r in chaos.restarts), 3),
        "jobs_finishing_again_after_restart_s_median": round(
            statistics.median(r["resumed_s"] for r in chaos.restarts), 3
        ),
        "jobs_finishing_again_after_restart_s_max": round(max(r["resumed_s"] for r in chaos.restarts), 3),
    }
    (chaos.tmp / "chaos.json").write_text(json.dumps(report, indent=2))
    print("chaos:", json.dumps(report))
    assert len(jobs) == JOBS
    assert lost == [] and duplicated == [] and corrupt == []
    assert all(j.retries_used == 0 for j in jobs)  # kills are never the job's fault
