"""Out-of-job staging against a real server: the claim filter, the quota, damaged files, a killed client.

The site client runs in this process (``glidein-client once`` cycles) or as a real process
(to be killed mid-staging); a pilot of the site is played through the pilot API, and the
pilot's own staged channel reads the staging area. Network namespaces are not needed here:
tests/integration/test_firewalled.py runs real pilots inside them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from glidein_client.pilot.channels.staged import StagedChannel
from glidein_client.sharedfs.staging_area import StagingArea, StagingUnavailable, hash_file
from glidein_client.site.client import SiteClient
from glidein_client.site.firewall.stager import PassReport
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import (
    Finish,
    JobState,
    Outcome,
    PilotRegister,
    Resources,
    Role,
    SyncRequest,
)
from tests.conftest import LiveServer

from .firewalled_site import firewalled_site, jobs_with_inputs, upload, wait_jobs

MB = 1 << 20


async def _pilot(live: LiveServer, site: str, cpus: int = 8) -> ApiClient:
    """A registered pilot of ``site`` played through the pilot API (its token minted by the site)."""
    async with live.api(await live.token(Role.SITE, site)) as site_api:
        grant = await site_api.new_pilot(site)
    api = live.api(grant.token)
    await api.__aenter__()
    await api.register(
        PilotRegister(resources=Resources(cpus=cpus, memory_mb=8192, disk_mb=8192), end_time=time.time() + 600)
    )
    return api


def _damage(path: Path, *, keep_mtime: bool) -> None:
    """Flip bytes in the middle of a file; with ``keep_mtime`` its size and modification time stay as they were."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(1000)
        data = fh.read(8)
        fh.seek(1000)
        fh.write(bytes(b ^ 0xFF for b in data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _sync(cpus: int, finished: list[Finish] | None = None) -> SyncRequest:
    return SyncRequest(free=Resources(cpus=cpus, memory_mb=8192, disk_mb=8192), lifetime_s=600, finished=finished or [])


@pytest.mark.parametrize(
    "quota", ['quota = "100M"\nmax_jobs = 2', 'quota = "3M"\nmax_jobs = 10'], ids=["jobs-quota", "bytes-quota"]
)
async def test_only_staged_jobs_are_claimed_and_the_quota_holds(
    live_server: LiveServer, tmp_path: Path, quota: str
) -> None:
    """At most 2 jobs fit (2 jobs allowed, or 3 MB for 1 MB inputs and their markers)."""
    site = await firewalled_site(live_server, tmp_path, "fw-quota", "none", staging=quota)
    assert site.staging is not None
    area = StagingArea(site.staging.dir)
    async with live_server.api(await live_server.token(Role.USER, "alice")) as user:
        inputs = [await upload(user, tmp_path / f"in{i}.bin", MB) for i in range(5)]
        ids = await user.submit(jobs_with_inputs(inputs, site.name))
        pilot = await _pilot(live_server, site.name)
        try:
            async with SiteClient(site) as client:
                assert client.firewall is not None
                ran: list[int] = []
                for _ in range(10):
                    report = await client.cycle()
                    assert report.submitted == ()  # `once` serves no pilot messages, so it starts no pilots
                    view = await client.api.staging_view(site.name)
                    staged = {j.job_id for j in view.staged}
                    # The quota: never more than 2 jobs staged, never more bytes in the area than allowed.
                    assert len(staged) == min(2, len(ids) - len(ran))
                    assert (await asyncio.to_thread(area.usage)).bytes <= site.staging_quota_mb * MB
                    # A pilot of the site with room for 8 jobs claims only what is staged.
                    claims = (await pilot.sync(_sync(8))).jobs
                    assert {c.job_id for c in claims} <= staged
                    assert len(claims) == len(staged)
                    for claim in claims:  # each input is there, verified, for the pilot
                        inp = claim.spec.inputs[0]
                        mark = area.vouched(inp.sha256 or "")
                        assert mark is not None and mark.sha256 == inp.sha256
                    await pilot.sync(
                        _sync(8, [Finish(attempt_id=c.attempt_id, lease=c.lease, outcome=Outcome.DONE) for c in claims])
                    )
                    ran += [c.job_id for c in claims]
                    if len(ran) == len(ids):
                        break
                assert sorted(ran) == ids
                states = await wait_jobs(user, ids, timeout_s=5)
                assert set(states.values()) == {JobState.DONE}
                await client.cycle()  # releases the last jobs and removes their inputs
                assert (await client.api.staging_view(site.name)).staged == []
                assert area.input_keys() == set()
        finally:
            await pilot.__aexit__(None, None, None)


async def test_damaged_staged_file_is_detected_and_staged_again(live_server: LiveServer, tmp_path: Path) -> None:
    site = await firewalled_site(live_server, tmp_path, "fw-damage", "none")
    assert site.staging is not None
    area = StagingArea(site.staging.dir)
    async with live_server.api(await live_server.token(Role.USER, "alice")) as user:
        inp = await upload(user, tmp_path / "data.bin", 2 * MB)
        (job_id,) = await user.submit(jobs_with_inputs([inp], site.name))
    key = inp.sha256 or ""
    path = area.input_path(key)
    async with SiteClient(site) as client:
        assert client.firewall is not None
        stager = client.firewall.stager
        await client.cycle()
        assert stager.last is not None and stager.last.staged == 1 and stager.last.downloaded == 1

        # Damage the staged copy: the client's next pass finds it changed, reads it, and stages it again.
        _damage(path, keep_mtime=False)
        await client.cycle()
        last = stager.last
        assert last is not None and (last.damaged, last.released, last.downloaded, last.staged) == (1, 1, 1, 1)
        assert hash_file(path)[0] == inp.sha256

        # Damage it silently (same size, same modification time): the pilot's check finds it, removes it
        # and waits; the client's next pass stages it again, and the pilot gets an intact copy.
        _damage(path, keep_mtime=True)
        await client.cycle()
        assert stager.last is not None and stager.last.damaged == 0  # the marker still vouches for it
        channel = StagedChannel(transport=None, area=area)  # type: ignore[arg-type]  # files only
        dest = tmp_path / "sandbox" / "data.bin"
        dest.parent.mkdir()
        try:
            await channel.fetch_input(inp, dest)
            raise AssertionError("a damaged staged input was handed to the job")
        except StagingUnavailable as exc:
            assert "damaged" in exc.message
        assert not dest.exists() and area.marker(key) is None
        await client.cycle()
        assert stager.last is not None and stager.last.damaged == 1 and stager.last.downloaded == 1
        await channel.fetch_input(inp, dest)
        assert hash_file(dest)[0] == inp.sha256
        assert (await client.api.staging_view(site.name)).staged[0].job_id == job_id


async def test_killed_client_resumes_without_downloading_verified_files(
    live_server: LiveServer, tmp_path: Path
) -> None:
    site = await firewalled_site(live_server, tmp_path, "fw-resume", "none", concurrency=1)
    assert site.staging is not None
    area = StagingArea(site.staging.dir)
    n = 24
    async with live_server.api(await live_server.token(Role.USER, "alice")) as user:
        inputs = [await upload(user, tmp_path / f"in{i}.bin", 6 * MB) for i in range(n)]
        await user.submit(jobs_with_inputs(inputs, site.name))
    # A real `glidein-client once` stages one file at a time; it is killed (SIGKILL) part-way.
    log = open(tmp_path / "client.log", "wb")  # noqa: ASYNC230 - handed to the child
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from glidein_client.site.cli import main; main()",
        "once",
        site.path,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 30
    while len(area.input_keys()) < 3:
        assert proc.returncode is None, (tmp_path / "client.log").read_text()
        assert time.monotonic() < deadline, "the client staged nothing"
        await asyncio.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
    # A file renamed into place whose marker the kill prevented is whole too, and is reused (after a check).
    whole = {e.name for e in os.scandir(area.inputs) if not e.name.startswith(".") and not e.name.endswith(".ok")}
    verified = {k: area.input_path(k).stat().st_ino for k in whole}
    assert 3 <= len(verified) < n, "the client was not killed mid-staging"

    # A new client goes on from there: it reads what is verified and downloads only the rest.
    async with SiteClient(site) as client:
        assert client.firewall is not None
        await client.cycle()
        report = client.firewall.stager.last
    assert isinstance(report, PassReport)
    # Jobs whose staging the killed client had already reported are not planned again, so their files
    # count neither as reused nor as downloaded; none of the verified files is downloaded a second time.
    assert report.downloaded == n - len(verified) and report.reused <= len(verified)
    assert report.failed == 0
    assert {k: area.input_path(k).stat().st_ino for k in verified} == verified  # not written again
    for inp in inputs:
        assert area.vouched(inp.sha256 or "") is not None
