"""A cancel reaches a busy pilot at once, not at its next heartbeat: the server answers the pilot's
waiting sync with it. A real server and a real pilot process whose only core runs a job while
another waits; the server's heartbeat is long (30 s), so only the wake-up can explain a prompt
kill. (The latency itself is measured in benchmarks/cancel_latency.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from glidein_client.wire.schema import JobSpec, JobState, Role
from glidein_server.server import Server, mint_token
from glidein_server.settings import ServerSettings, StateDir
from tests.conftest import LiveServer

HEARTBEAT_S = 30.0


@pytest.fixture
async def slow_heartbeat_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    state = StateDir(tmp_path / "server")
    state.write(ServerSettings(port=0, heartbeat_s=HEARTBEAT_S, pilot_timeout_s=120.0, insecure_http=True))
    async with Server(str(state.root)) as srv:
        op = await mint_token(srv.store, Role.OPERATOR, "operator")
        live = LiveServer(url=srv.url, state_dir=state.root, operator_token=op, server=srv, tmp=tmp_path)
        try:
            yield live
        finally:
            for proc in live.pilots:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()


def alive(argv: list[str]) -> bool:
    return any(p.info["cmdline"] == argv for p in psutil.process_iter(["cmdline"]))


async def test_a_running_job_is_killed_long_before_the_next_heartbeat(slow_heartbeat_server: LiveServer) -> None:
    live = slow_heartbeat_server
    marker = ["sleep", f"{900 + os.getpid() % 1000 / 1000:.3f}"]
    async with live.api(await live.token(Role.USER, "alice")) as api:
        running, waiting = await api.submit(
            [
                JobSpec(argv=marker, cpus=1, memory_mb=64, disk_mb=1, walltime_s=300),
                JobSpec(argv=["sleep", "900"], cpus=1, memory_mb=64, disk_mb=1, walltime_s=300),
            ]
        )
        await live.start_pilot(cpus=1, idle_timeout_s=60)
        deadline = time.monotonic() + 30
        while not alive(marker) or (await api.get_job(running)).state is not JobState.RUNNING:
            assert time.monotonic() < deadline, live.pilot_logs()
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # the pilot is busy and waits in its sync (it would next report in ~30 s)
        t0 = time.monotonic()
        await api.cancel(running)
        while alive(marker):
            assert time.monotonic() - t0 < HEARTBEAT_S / 3, "the cancel waited for the pilot's heartbeat"
            await asyncio.sleep(0.05)
        [attempt] = await api.attempts(running)
        while attempt.finished_at is None and time.monotonic() - t0 < HEARTBEAT_S / 3:
            await asyncio.sleep(0.05)
            [attempt] = await api.attempts(running)
        assert attempt.outcome == "cancelled", attempt
        # the freed core takes the waiting job at once too (its report woke the pilot's sync)
        while (await api.get_job(waiting)).state is not JobState.RUNNING:
            assert time.monotonic() - t0 < HEARTBEAT_S / 3, "the freed core waited for the heartbeat"
            await asyncio.sleep(0.05)
        await api.cancel(waiting)
