"""What a hostile pilot sends is handled as data: log lines it cannot forge, outputs it cannot plant."""

from __future__ import annotations

import logging
import time

import pytest

from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import ConflictError
from glidein_client.wire.schema import JobSpec, PilotExit, PilotRegister, PilotShape, Resources, Role, SyncRequest

from ..conftest import LiveServer

SHAPE = PilotShape(cpus=2, memory_mb=2000, disk_mb=1000, walltime_s=3600)
FREE = Resources(cpus=2, memory_mb=2000, disk_mb=1000)
FORGED = "INFO glidein_server.http.app: operator operator added user mallory"


async def _pilot(live: LiveServer) -> ApiClient:
    async with live.api(await live.token(Role.SITE, "local")) as site:
        await site.demand("local", SHAPE)
        grant = await site.new_pilot("local")
    return live.api(grant.token)


async def test_newlines_in_pilot_text_cannot_forge_log_lines(
    live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="glidein_server")
    async with await _pilot(live_server) as pilot:
        evil = f"node1\n{FORGED}"
        await pilot.register(
            PilotRegister(
                host=evil,
                batch_id=f"1\r\n{FORGED}",
                resources=FREE,
                end_time=time.time() + 3600,
                selftest_ok=False,
                selftest_reason=f"disk\n{FORGED}",
            )
        )
        await pilot.pilot_exit(PilotExit(reason=f"idle\n{FORGED}"))
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("glidein_server")]
    pilot_lines = [m for m in messages if m.startswith("pilot ")]
    assert len(pilot_lines) == 2, messages
    for m in messages:
        assert "\n" not in m and "\r" not in m, m
    assert not any(line.startswith(FORGED) for line in caplog.text.splitlines())
    assert "'node1\\nINFO" in pilot_lines[0]  # the text is there, quoted, for the operator to read


async def test_an_output_refused_for_a_stale_lease_leaves_nothing_on_disk(live_server: LiveServer) -> None:
    async with live_server.api(await live_server.token(Role.USER, "alice")) as alice:
        await alice.submit([JobSpec(argv=["true"], outputs=["out.txt"], walltime_s=60)])
    files = live_server.server.api.files.root if live_server.server.api else None
    assert files is not None
    payload = live_server.tmp / "out.txt"
    async with await _pilot(live_server) as pilot:
        await pilot.register(PilotRegister(resources=FREE, end_time=time.time() + 3600))
        (claim,) = (await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000))).jobs
        payload.write_bytes(b"planted by a stale attempt\n" * 1000)
        with pytest.raises(ConflictError, match="stale lease"):
            await pilot.upload_output(claim.attempt_id, "0" * 32, "out.txt", payload)
        assert [p for p in files.rglob("*") if p.is_file()] == []  # neither the file nor a partial one
        payload.write_bytes(b"the real result\n")
        out = await pilot.upload_output(claim.attempt_id, claim.lease, "out.txt", payload)
    stored = files / out.sha256[:2] / out.sha256
    assert stored.read_bytes() == b"the real result\n"
    assert stored.stat().st_mode & 0o077 == 0
