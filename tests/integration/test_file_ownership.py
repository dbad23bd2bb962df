"""Files by ownership: a hash is not a key. Two users and a real pilot against a real server."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from glidein_client.wire.errors import GlideinError, NotFoundError, ValidationError
from glidein_client.wire.schema import (
    Finish,
    InputFile,
    JobSpec,
    JobState,
    Outcome,
    PilotRegister,
    PilotShape,
    Resources,
    Role,
    SyncRequest,
)

from ..conftest import LiveServer
from .test_pilot import wait_jobs

SHAPE = PilotShape(cpus=2, memory_mb=2000, disk_mb=1000, walltime_s=3600)
FREE = Resources(cpus=2, memory_mb=2000, disk_mb=1000)
SECRET = b"alice's unpublished calibration constants\n"


async def _alice_secret(live: LiveServer, tmp: Path) -> str:
    path = tmp / "calib.txt"
    path.write_bytes(SECRET)
    async with live.api(await live.token(Role.USER, "alice")) as alice:
        return (await alice.upload_file(path)).sha256


async def _get(live: LiveServer, token: str, path: str) -> int:
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s,
        s.get(f"{live.url}/api/v1{path}") as resp,
    ):
        return resp.status


async def test_a_user_cannot_name_or_read_another_users_file_by_its_hash(
    live_server: LiveServer, tmp_path: Path
) -> None:
    sha = await _alice_secret(live_server, tmp_path)
    bob_token = await live_server.token(Role.USER, "bob")
    async with live_server.api(bob_token) as bob:
        stolen = InputFile(name="calib.txt", sha256=sha, size=len(SECRET))
        with pytest.raises(ValidationError, match="never uploaded by you") as exc:
            await bob.submit([JobSpec(argv=["cat", "calib.txt"], inputs=[stolen])])
        # The same answer as for a hash nobody uploaded: the refusal reveals nothing.
        nobody = InputFile(name="x", sha256="b" * 64, size=1)
        with pytest.raises(ValidationError) as none_exc:
            await bob.submit([JobSpec(argv=["true"], inputs=[nobody])])
        assert str(exc.value).replace(sha[:12], "") == str(none_exc.value).replace("b" * 12, "").replace(
            "'x'", "'calib.txt'"
        )
        assert await _get(live_server, bob_token, f"/files/{sha}") == 404
        # Whoever has the content may upload it and then name it: that proves nothing new.
        own = tmp_path / "mine.txt"
        own.write_bytes(SECRET)
        assert (await bob.upload_file(own)).sha256 == sha
        assert len(await bob.submit([JobSpec(argv=["cat", "calib.txt"], inputs=[stolen])])) == 1


async def test_a_pilot_reads_only_the_inputs_of_jobs_it_holds(live_server: LiveServer, tmp_path: Path) -> None:
    sha = await _alice_secret(live_server, tmp_path)
    async with live_server.api(await live_server.token(Role.USER, "bob")) as bob:
        # Bob's job quotes the hash in its argv and env: text, not a declared input.
        (bob_job,) = await bob.submit([JobSpec(argv=["echo", sha], env={"H": sha}, walltime_s=60)])
    async with live_server.api(await live_server.token(Role.SITE, "local")) as site:
        await site.demand("local", SHAPE)
        grant = await site.new_pilot("local")
    async with live_server.api(grant.token) as pilot:
        await pilot.register(PilotRegister(resources=FREE, end_time=time.time() + 3600))
        (claim,) = (await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000))).jobs
        assert claim.job_id == bob_job
        with pytest.raises(NotFoundError, match="not yours to read"):
            await pilot.download(sha, tmp_path / "stolen")
        async with live_server.api(await live_server.token(Role.USER, "alice")) as alice:
            inp = InputFile(name="calib.txt", sha256=sha, size=len(SECRET))
            (alice_job,) = await alice.submit([JobSpec(argv=["cat", "calib.txt"], inputs=[inp], walltime_s=60)])
        (held,) = (await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000))).jobs
        assert held.job_id == alice_job
        await pilot.download(sha, tmp_path / "needed")  # a declared input of a job it holds
        assert (tmp_path / "needed").read_bytes() == SECRET
        done = Finish(attempt_id=held.attempt_id, lease=held.lease, outcome=Outcome.DONE, exit_code=0)
        await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000, finished=[done], claim=False))
        with pytest.raises(NotFoundError):  # no longer held: no longer readable
            await pilot.download(sha, tmp_path / "again")
    assert not (tmp_path / "stolen").exists() and not (tmp_path / "again").exists()


async def test_the_servers_own_files_are_never_fetched_with_a_pilot_token(
    live_server: LiveServer, tmp_path: Path
) -> None:
    sha = await _alice_secret(live_server, tmp_path)
    async with live_server.api(await live_server.token(Role.USER, "bob")) as bob:
        own_url = f"{live_server.url}/api/v1/files/{sha}"
        with pytest.raises(ValidationError, match="points at this glidein server itself"):
            await bob.submit([JobSpec(argv=["true"], inputs=[InputFile(name="c", url=own_url)])])
        # Under another name the server does not know as its own, a real pilot fetches the URL
        # without credentials: the server answers 401 and the job never sees the file.
        port = live_server.url.rsplit(":", 1)[1]
        alias = f"http://localhost:{port}/api/v1/files/{sha}"
        (job_id,) = await bob.submit(
            [
                JobSpec(
                    script="cat c > out.txt",
                    inputs=[InputFile(name="c", url=alias)],
                    outputs=["out.txt"],
                    walltime_s=60,
                    max_retries=0,
                )
            ]
        )
        await live_server.start_pilot(idle_timeout_s=3)
        states = await wait_jobs(bob, [job_id])
        assert states[job_id] is JobState.FAILED, live_server.pilot_logs()
        (attempt,) = await bob.attempts(job_id)
        with pytest.raises(NotFoundError):
            await bob.fetch_output(job_id, "out.txt")
    assert "401" in (attempt.reason or ""), attempt  # the server asked for the token it was not sent
    # The pilot's client sends its token to the server's API only, never to an input URL, even
    # one spelled exactly as the server's own address.
    async with live_server.api(await live_server.token(Role.PILOT, "1")) as pilot:
        with pytest.raises(GlideinError, match="401"):
            await pilot.download_url(own_url, tmp_path / "stolen", sha)
        await pilot.health()
    assert not (tmp_path / "stolen").exists()
