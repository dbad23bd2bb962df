"""Retention: `glidein-server purge --before AGE` and the server's own periodic purge, on SQLite.

(Both backends' purge itself is in the store contract suite.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from glidein_client.wire.schema import JobSpec
from glidein_server.server import Server, open_store
from glidein_server.settings import ServerSettings, StateDir

DAY_S = 86400.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "glidein_server.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("GLIDEIN_")},
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


async def jobs_finished_days_ago(state: StateDir, *days: float) -> list[int]:
    """Jobs cancelled ``days`` ago (a cancelled job is finished), plus one still idle."""
    store = open_store(state, state.load())
    await store.open()
    try:
        ids = await store.add_jobs("alice", [JobSpec(argv=["true"]) for _ in range(len(days) + 1)], time.time())
        for job_id, age in zip(ids, days, strict=False):
            await store.cancel_job(job_id, time.time() - age * DAY_S)
        return ids
    finally:
        await store.close()


async def remaining(state: StateDir, ids: list[int]) -> list[int]:
    store = open_store(state, state.load())
    await store.open()
    try:
        return [i for i in ids if await store.get_job(i) is not None]
    finally:
        await store.close()


async def test_purge_command_removes_what_is_older_than_asked(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "srv")
    state.write(ServerSettings(insecure_http=True))
    ids = await jobs_finished_days_ago(state, 40, 31, 2)
    proc = cli("purge", "--dir", str(state.root), "--before", "30d", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"jobs": 2, "attempts": 0, "files": 0}
    assert await remaining(state, ids) == ids[2:]
    plain = cli("purge", "--dir", str(state.root), "--before", "1d")
    assert plain.stdout.strip() == "Purged 1 jobs finished more than 1d ago, 0 attempts and 0 output files."
    assert await remaining(state, ids) == ids[3:]


def test_a_bad_age_is_a_plain_error(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "srv")
    state.write(ServerSettings(insecure_http=True))
    proc = cli("purge", "--dir", str(state.root), "--before", "soon")
    assert proc.returncode != 0
    assert "--before" in proc.stderr and "duration" in proc.stderr


async def test_the_server_purges_on_its_own_and_logs_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = StateDir(tmp_path / "srv")
    state.write(ServerSettings(port=0, insecure_http=True, retention_days=7, retention_interval_s=3600))
    ids = await jobs_finished_days_ago(state, 8, 6)
    caplog.set_level(logging.INFO, logger="glidein_server.retention")
    async with Server(str(state.root)):
        deadline = time.monotonic() + 10
        while await remaining(state, ids) != ids[1:]:
            assert time.monotonic() < deadline, "the server did not purge"
            await asyncio.sleep(0.1)
    assert any("purged 1 jobs finished before" in r.getMessage() for r in caplog.records)
