"""No secret ever appears in a log line.

A full run — operator actions with one-time codes, a user submitting and fetching with the
`glidein` CLI, a site minting a pilot, a real pilot running the job, a revocation and a
throttled token — with every log record of the server captured at DEBUG, the pilot's log and
the CLI's output. None of them holds any token minted during the run, a job's lease, the
operator's TOTP secret or the key that encrypts it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
from pathlib import Path

import pytest

import glidein_client.wire.api as client_api
from glidein_client.wire.errors import RateLimited
from glidein_client.wire.schema import Role
from glidein_server.http import auth
from glidein_server.http.ratelimit import Rate, RateLimits

from ..conftest import LiveServer


async def test_a_full_run_logs_no_secret(
    live_server: LiveServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    caplog.set_level(logging.DEBUG)
    minted: list[str] = []
    new_token = auth.new_token

    def recording() -> str:
        minted.append(new_token())
        return minted[-1]

    monkeypatch.setattr(auth, "new_token", recording)
    live = live_server
    code = await live.enable_totp()
    async with live.api(live.operator_token) as op:
        alice = await op.admin_add(Role.USER, "alice", code())
        await op.admin_add(Role.SITE, "local", code())
        await op.admin_tokens(code())
    outputs: list[str] = []

    async def glidein(*args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "glidein_client.user.cli",
            *args,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "GLIDEIN_URL": live.url, "GLIDEIN_TOKEN": alice.token},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        outputs.append(out.decode())
        assert proc.returncode == 0, outputs[-1]

    (tmp_path / "data.txt").write_text("some input\n")
    await glidein(
        "submit",
        "--walltime",
        "1m",
        "-i",
        "data.txt",
        "-o",
        "out.txt",
        "--",
        "sh",
        "-c",
        "tr a-z A-Z < data.txt > out.txt",
    )
    await live.start_pilot(cpus=1, idle_timeout_s=2.0)
    await glidein("wait", "--timeout", "50s")
    await glidein("fetch", "1", "-d", str(tmp_path / "out"))
    assert (tmp_path / "out" / "1" / "out.txt").read_text() == "SOME INPUT\n"
    api = live.server.api
    assert api is not None
    api.limiter.limits = RateLimits(user=Rate(per_s=0.01, burst=1))
    monkeypatch.setattr(client_api, "RATE_LIMIT_RETRIES", 0)
    async with live.api(alice.token) as user:
        await user.summary()
        with pytest.raises(RateLimited):
            await user.summary()  # throttled: logged, by token id only
    async with live.api(live.operator_token) as op:
        await op.admin_revoke(Role.USER, "alice", code())
    for proc in live.pilots:
        await asyncio.wait_for(proc.wait(), 30)

    db = sqlite3.connect(live.state_dir / "glidein.db")
    leases = [row[0] for row in db.execute("SELECT lease FROM attempts")]
    db.close()
    secrets = [
        *minted,
        live.operator_token,
        *leases,
        live.totp_secret,
        (live.state_dir / "totp.key").read_text().strip(),
    ]
    assert len(minted) >= 4 and leases
    logs = caplog.text + "\n".join(outputs) + live.pilot_logs()
    assert "rate limit: token" in caplog.text and "minted pilot" in caplog.text  # the run did log
    leaked = [s[:6] + "…" for s in secrets if s and s in logs]
    assert not leaked, f"secrets in the logs: {leaked}"
