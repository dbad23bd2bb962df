"""Priority cannot jump the queue: between users the cores are fair-shared, over real HTTP.

Bob queues first; Alice then submits with a huge priority. Before, a pilot took only
Alice's jobs; now each user's priority orders only their own jobs, and the cores are split
by the shares the operator set with ``glidein-server user share``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobSpec, PilotRegister, PilotShape, Resources, Role, SyncRequest
from glidein_server.server import Server, mint_token
from glidein_server.settings import ServerSettings, StateDir

SHAPE = PilotShape(cpus=8, memory_mb=8000, disk_mb=1000, walltime_s=3600)


async def _server_cli(state: Path, *argv: str, ok: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "glidein_server.cli",
        *argv,
        "--dir",
        str(state),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert (proc.returncode == 0) is ok, out.decode()
    return out.decode()


async def _claims(srv: Server, cpus: int) -> Counter[str]:
    """A pilot of ``cpus`` cores claims once; whose jobs did it get (by the job's first argument)?"""
    site = await mint_token(srv.store, Role.SITE, "s")
    async with ApiClient(srv.url, site) as api:
        await api.demand("s", SHAPE)
        grant = await api.new_pilot("s")
    free = Resources(cpus=cpus, memory_mb=cpus * 1000, disk_mb=1000)
    async with ApiClient(srv.url, grant.token) as pilot:
        await pilot.register(PilotRegister(resources=free, end_time=time.time() + 3600))
        claimed = (await pilot.sync(SyncRequest(free=free, lifetime_s=3000))).jobs
    return Counter((c.spec.argv or ["?"])[1] for c in claimed)


@pytest.mark.parametrize(("share", "expected"), [(None, {"alice": 4, "bob": 4}), ("3", {"alice": 6, "bob": 2})])
async def test_a_huge_priority_does_not_take_other_users_cores(
    tmp_path: Path, share: str | None, expected: dict[str, int]
) -> None:
    state = StateDir(tmp_path / "server")
    state.write(ServerSettings(port=0, insecure_http=True))
    if share is not None:
        out = await _server_cli(state.root, "user", "share", "alice", share)
        assert f"User 'alice' has share {share}" in out
        assert state.load().shares == {"alice": float(share)}
    async with Server(str(state.root)) as srv:
        async with ApiClient(srv.url, await mint_token(srv.store, Role.USER, "bob")) as bob:
            await bob.submit([JobSpec(argv=["echo", "bob", str(i)], memory_mb=500, walltime_s=60) for i in range(20)])
        async with ApiClient(srv.url, await mint_token(srv.store, Role.USER, "alice")) as alice:
            await alice.submit(
                [JobSpec(argv=["echo", "alice", "low"], memory_mb=500, walltime_s=60, priority=1)]
                + [
                    JobSpec(argv=["echo", "alice", str(i)], memory_mb=500, walltime_s=60, priority=10**9)
                    for i in range(20)
                ]
            )
        assert await _claims(srv, 8) == expected
        # Alice's priority still orders her own jobs: her priority-1 job waits behind all her others.
        async with ApiClient(srv.url, await mint_token(srv.store, Role.OPERATOR, "op")) as op:
            (low,) = [
                j
                for j in (await op.list_jobs(owner="alice", limit=100)).jobs
                if j.spec.argv == ["echo", "alice", "low"]
            ]
            assert low.state.value == "idle"
        # The claimed cores count: the next pilot goes on from there (bob has fewer cores in use per share).
        again = await _claims(srv, 8)
        assert sum(again.values()) == 8
        total = {u: expected[u] + again[u] for u in ("alice", "bob")}
        weight = {"alice": float(share or 1), "bob": 1.0}
        assert abs(total["alice"] / weight["alice"] - total["bob"] / weight["bob"]) <= 1.0, total


async def test_a_bad_share_is_refused_with_a_plain_message(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "server")
    state.write(ServerSettings(port=0, insecure_http=True))
    for bad in ("-1", "0", "lots"):
        out = await _server_cli(state.root, "user", "share", "alice", bad, ok=False)
        assert f"The share '{bad}' is not a positive number" in out and "Traceback" not in out
    assert state.load().shares == {}
    await _server_cli(state.root, "user", "share", "alice", "2")
    await _server_cli(state.root, "user", "share", "alice", "default")
    assert state.load().shares == {}
