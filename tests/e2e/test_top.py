"""``glidein-server top`` against the database of a real running server, as an operator on its host would."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobSpec, PilotShape, Role
from glidein_server.server import Server, mint_token
from glidein_server.settings import ServerSettings, StateDir

pytestmark = [pytest.mark.slow]


async def _top(state: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "glidein_server.cli", "--dir", str(state), "top", "--once", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()
    return out.decode()


async def test_top_shows_jobs_sites_and_a_silent_client(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "server")
    state.write(ServerSettings(port=0, insecure_http=True, client_dead_after_s=60.0))
    async with Server(str(state.root)) as srv:
        user = await mint_token(srv.store, Role.USER, "ann")
        site = await mint_token(srv.store, Role.SITE, "north")
        async with ApiClient(srv.url, user) as api:
            await api.submit([JobSpec(argv=["true"], cpus=c, labels={"dataset": "d1"}) for c in (1, 4, 4)])
        async with ApiClient(srv.url, site) as api:
            await api.demand("north", PilotShape(cpus=4, memory_mb=4096, walltime_s=3600))
        # A second site whose client last reported two minutes ago, beyond client_dead_after_s.
        await srv.store.report_site("south", PilotShape(cpus=1, memory_mb=1024, walltime_s=600), time.time() - 120)
        text = await _top(state.root)
        assert "jobs     idle 3" in text
        lines = {line.split()[0]: line for line in text.splitlines() if line.startswith(("north", "south"))}
        assert lines["north"].split()[1:3] == ["0", "0"] and "s ago" in lines["north"], text
        assert "DOWN" not in lines["north"] and lines["south"].endswith("DOWN"), text
        snap = json.loads(await _top(state.root, "--json"))
        assert {tuple(j) for j in snap["jobs"]} == {("ann", "idle", False, 1), ("ann", "idle", True, 2)}
        assert [(s["name"], s["multicore_idle"]) for s in snap["sites"]] == [("north", 2), ("south", 2)]
