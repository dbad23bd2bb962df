"""The REST API over real HTTP: bad input, tokens and roles, leases, files, OpenAPI."""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
import pytest

from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import AuthError, ConflictError, ForbiddenError, NotFoundError, ValidationError
from glidein_client.wire.schema import (
    Finish,
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

SHAPE = PilotShape(cpus=4, memory_mb=4000, disk_mb=1000, walltime_s=3600)
FREE = Resources(cpus=4, memory_mb=4000, gpus=0, disk_mb=1000)


async def raw_post(live: LiveServer, token: str, path: str, body: bytes) -> tuple[int, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{live.url}/api/v1{path}", data=body, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("job", "field", "words"),
    [
        ('{"argv": ["true"], "cpus": -1}', "jobs[0].cpus", ">= 1"),
        ('{"argv": ["true"], "colour": "red"}', "jobs[0]", "unknown field `colour`"),
        ('{"cpus": 1}', "jobs[0].argv", "exactly one of a command"),
        ('{"argv": ["true"], "outputs": ["../escape.txt"]}', "jobs[0].outputs[0]", "outside the job's sandbox"),
        ('{"argv": ["true"], "outputs": ["/etc/passwd"]}', "jobs[0].outputs[0]", "outside the job's sandbox"),
        ('{"argv": ["true"], "memory_mb": "lots"}', "jobs[0].memory_mb", "Expected `int`"),
        ('{"argv": ["true"], "priority": 2147483648}', "jobs[0].priority", "<= 2147483647"),
        ('{"argv": ["echo", "a\\u0000b"]}', "jobs[0].argv[1]", "NUL character"),
        ('{"argv": ["true"], "labels": {"ds": "\\u0000"}}', "jobs[0].labels", "NUL character"),
    ],
)
async def test_malformed_jobs_get_a_plain_400_naming_the_field(
    live_server: LiveServer, job: str, field: str, words: str
) -> None:
    token = await live_server.token(Role.USER, "alice")
    async with live_server.api(token) as api:
        kept = await api.submit([JobSpec(argv=["true"])])
    status, body = await raw_post(live_server, token, "/jobs", f'{{"jobs": [{job}]}}'.encode())
    assert status == 400
    assert body["field"] == field
    assert words in body["error"]
    assert "hint" in body
    async with live_server.api(token) as api:
        listed = await api.list_jobs()
    assert [j.id for j in listed.jobs] == kept  # nothing accepted was lost, nothing bad was added


async def test_a_bad_job_in_a_batch_rejects_the_whole_request(live_server: LiveServer) -> None:
    token = await live_server.token(Role.USER, "alice")
    status, body = await raw_post(
        live_server, token, "/jobs", b'{"jobs": [{"argv": ["ok"]}, {"argv": ["x"], "cpus": 0}]}'
    )
    assert status == 400 and body["field"] == "jobs[1].cpus"
    async with live_server.api(token) as api:
        assert (await api.list_jobs()).jobs == []


async def test_a_backslash_that_only_looks_like_a_nul_is_kept(live_server: LiveServer) -> None:
    token = await live_server.token(Role.USER, "alice")
    async with live_server.api(token) as api:
        (job_id,) = await api.submit([JobSpec(argv=["echo", "\\u0000"])])
        assert (await api.get_job(job_id)).spec.argv == ["echo", "\\u0000"]


async def test_not_json_is_a_400_not_a_500(live_server: LiveServer) -> None:
    token = await live_server.token(Role.USER, "alice")
    status, body = await raw_post(live_server, token, "/jobs", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]


async def test_tokens_and_roles(live_server: LiveServer) -> None:
    async with ApiClient(live_server.url, None) as anon:
        with pytest.raises(AuthError, match="needs a token"):
            await anon.list_jobs()
        assert (await anon.health())["ok"] is True
    async with ApiClient(live_server.url, "not-a-real-token") as bad:
        with pytest.raises(AuthError, match="not valid"):
            await bad.list_jobs()
    site_a = await live_server.token(Role.SITE, "a")
    async with live_server.api(site_a) as api:
        with pytest.raises(ForbiddenError, match="belongs to site 'a'"):
            await api.demand("b", SHAPE)
        with pytest.raises(ForbiddenError, match="site token cannot do this"):
            await api.submit([JobSpec(argv=["true"])])
    user = await live_server.token(Role.USER, "alice")
    async with live_server.api(user) as api:
        with pytest.raises(ForbiddenError):
            await api.demand("a", SHAPE)


async def test_users_see_and_touch_only_their_own_jobs(live_server: LiveServer) -> None:
    alice = live_server.api(await live_server.token(Role.USER, "alice"))
    bob = live_server.api(await live_server.token(Role.USER, "bob"))
    async with alice, bob:
        (a_job,) = await alice.submit([JobSpec(argv=["true"], labels={"dataset": "x"})])
        (b_job,) = await bob.submit([JobSpec(argv=["true"], labels={"dataset": "y"})])
        assert [j.id for j in (await alice.list_jobs()).jobs] == [a_job]
        assert [j.id for j in (await bob.list_jobs(label="dataset=y")).jobs] == [b_job]
        assert (await bob.list_jobs(label="dataset=x")).jobs == []
        for call in (bob.get_job, bob.cancel, bob.retry, bob.attempts):
            with pytest.raises(NotFoundError):
                await call(a_job)
        assert (await alice.get_job(a_job)).state is JobState.IDLE
    async with live_server.api(live_server.operator_token) as op:
        assert {j.owner for j in (await op.list_jobs()).jobs} == {"alice", "bob"}


async def test_job_too_big_for_every_site_is_accepted_with_a_plain_note(live_server: LiveServer) -> None:
    async with live_server.api(await live_server.token(Role.SITE, "local")) as site:
        await site.demand("local", SHAPE)
    async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
        (job_id,) = await api.submit([JobSpec(argv=["true"], cpus=64)])
        job = await api.get_job(job_id)
    assert job.state is JobState.IDLE
    assert job.note is not None and "No site can run this job" in job.note and "64 cpus" in job.note


async def test_ten_thousand_jobs_in_one_request(live_server: LiveServer) -> None:
    async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
        ids = await api.submit([JobSpec(argv=["true"], walltime_s=60) for _ in range(10_000)])
        assert len(ids) == 10_000 and ids == list(range(ids[0], ids[0] + 10_000))
        with pytest.raises(ValidationError, match="jobs"):
            await api.submit([JobSpec(argv=["true"])] * 10_001)
    async with live_server.api(await live_server.token(Role.SITE, "local")) as site:
        demand = await site.demand("local", SHAPE)
    # 1024 MB per job (the default): a 4-core, 4000 MB pilot holds 3 of them at once.
    assert demand.jobs == 10_000 and demand.pilots == 3334


async def pilot_client(live: LiveServer) -> ApiClient:
    async with live.api(await live.token(Role.SITE, "local")) as site:
        await site.demand("local", SHAPE)
        grant = await site.new_pilot("local")
    pilot = live.api(grant.token)
    await pilot.__aenter__()
    await pilot.register(PilotRegister(resources=FREE, end_time=time.time() + 3600))
    return pilot


async def test_stale_lease_is_refused_and_outputs_are_checked(live_server: LiveServer, tmp_path: object) -> None:
    async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
        (job_id,) = await api.submit([JobSpec(argv=["true"], outputs=["out.txt"], walltime_s=60)])
        pilot = await pilot_client(live_server)
        try:
            (claim,) = (await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000))).jobs
            assert claim.job_id == job_id
            # Upload with a wrong checksum or an undeclared name is refused.
            path = live_server.tmp / "out.txt"
            path.write_text("result\n")
            with pytest.raises(ValidationError, match="not one of the job's declared outputs"):
                await pilot.upload_output(claim.attempt_id, claim.lease, "other.txt", path)
            with pytest.raises(ConflictError, match="stale lease"):
                await pilot.upload_output(claim.attempt_id, "wrong", "out.txt", path)
            out = await pilot.upload_output(claim.attempt_id, claim.lease, "out.txt", path)
            bad = Finish(attempt_id=claim.attempt_id, lease="0" * 32, outcome=Outcome.DONE, exit_code=0)
            resp = await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000, finished=[bad]))
            assert [r.attempt_id for r in resp.refused] == [claim.attempt_id]
            good = Finish(
                attempt_id=claim.attempt_id, lease=claim.lease, outcome=Outcome.DONE, exit_code=0, outputs=[out]
            )
            assert (await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000, finished=[good]))).refused == []
            # A second, late report of the same attempt cannot change the outcome.
            late = Finish(attempt_id=claim.attempt_id, lease=claim.lease, outcome=Outcome.FAILED, exit_code=1)
            assert len((await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000, finished=[late]))).refused) == 1
        finally:
            await pilot.__aexit__(None, None, None)
        job = await api.get_job(job_id)
        assert job.state is JobState.DONE
        assert await api.fetch_output(job_id, "out.txt") == b"result\n"
        assert job.outputs[0].sha256 == hashlib.sha256(b"result\n").hexdigest()


async def test_upload_with_wrong_checksum_is_refused(live_server: LiveServer) -> None:
    token = await live_server.token(Role.USER, "alice")
    async with (
        aiohttp.ClientSession() as s,
        s.put(
            f"{live_server.url}/api/v1/files/{'0' * 64}", data=b"hello", headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status == 400
        assert "does not match its sha256" in (await resp.json())["error"]


async def test_input_must_be_uploaded_before_submit(live_server: LiveServer) -> None:
    token = await live_server.token(Role.USER, "alice")
    status, body = await raw_post(
        live_server,
        token,
        "/jobs",
        b'{"jobs": [{"argv": ["cat", "x"], "inputs": [{"name": "x", "sha256": "' + b"a" * 64 + b'"}]}]}',
    )
    assert status == 400 and "never uploaded" in body["error"]


async def test_openapi_document_lists_every_route(live_server: LiveServer) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{live_server.url}/api/v1/openapi.json") as resp:
        doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/pilot/sync", "/api/v1/sites/{site}/demand"):
        assert path in doc["paths"]
    schema = doc["components"]["schemas"]["JobSpec"]
    assert schema["properties"]["cpus"]["minimum"] == 1
    assert schema["additionalProperties"] is False


async def test_pilots_failing_at_start_put_the_site_in_backoff(live_server: LiveServer) -> None:
    async with live_server.api(await live_server.token(Role.SITE, "flaky")) as site:
        await site.demand("flaky", SHAPE)
        grants = [await site.new_pilot("flaky") for _ in range(4)]
        # Three pilots end in the batch system without ever reaching the server.
        await site.pilot_states("flaky", {str(g.pilot_id): "failed" for g in grants[:3]})
        demand = await site.demand("flaky", SHAPE)
        assert demand.start_failures == 3 and 0 < demand.backoff_s <= 60
        async with live_server.api(live_server.operator_token) as op:
            (view,) = [s for s in (await op.summary()).sites if s.name == "flaky"]
        assert view.start_failures == 3 and view.backoff_s > 0
        # A pilot that starts ends the back-off.
        async with live_server.api(grants[3].token) as pilot:
            await pilot.register(PilotRegister(resources=FREE, end_time=time.time() + 3600))
        demand = await site.demand("flaky", SHAPE)
        assert demand.start_failures == 0 and demand.backoff_s == 0


async def test_a_claim_whose_answer_was_lost_goes_back_to_the_queue(live_server: LiveServer) -> None:
    async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
        (job_id,) = await api.submit([JobSpec(argv=["true"], walltime_s=60)])
        pilot = await pilot_client(live_server)
        try:
            (lost,) = (await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000, held=[]))).jobs
            # The pilot never saw that answer: its next sync says it holds nothing.
            (again,) = (await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000, held=[]))).jobs
        finally:
            await pilot.__aexit__(None, None, None)
        assert again.job_id == job_id and again.attempt_id != lost.attempt_id
        attempts = await api.attempts(job_id)
        assert attempts[0].outcome == "interrupted" and "never reached the pilot" in (attempts[0].reason or "")
        assert (await api.get_job(job_id)).retries_used == 0


async def test_input_urls_elsewhere_are_fetched_without_the_token(live_server: LiveServer) -> None:
    from aiohttp import web

    seen: list[str | None] = []

    async def serve(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(body=b"data")

    app = web.Application()
    app.router.add_get("/x.dat", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with live_server.api("a-secret-token") as api:
            dest = live_server.tmp / "x.dat"
            await api.download_url(f"http://127.0.0.1:{port}/x.dat", dest, hashlib.sha256(b"data").hexdigest())
        assert dest.read_bytes() == b"data"
        assert seen == [None]
    finally:
        await runner.cleanup()


async def test_reports_pass_a_waiting_long_poll_and_claim_nothing(live_server: LiveServer) -> None:
    async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
        (first,) = await api.submit([JobSpec(argv=["true"], walltime_s=60)])
        pilot = await pilot_client(live_server)
        try:
            (claim,) = (await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000))).jobs
            # The pilot long-polls for more work while its job runs ...
            long_poll = asyncio.create_task(pilot.sync(SyncRequest(free=FREE, lifetime_s=3000, wait_s=30)))
            await asyncio.sleep(0.2)
            (second,) = await api.submit([JobSpec(argv=["true"], walltime_s=60)])
            assert (await long_poll).jobs[0].job_id == second
            # ... and reports the finished job on the side: it lands at once, and takes no new work.
            long_poll = asyncio.create_task(pilot.sync(SyncRequest(free=FREE, lifetime_s=3000, wait_s=30)))
            await asyncio.sleep(0.2)
            (third,) = await api.submit([JobSpec(argv=["true"], walltime_s=60)])
            done = Finish(attempt_id=claim.attempt_id, lease=claim.lease, outcome=Outcome.DONE, exit_code=0)
            side = await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000, finished=[done], claim=False))
            assert side.jobs == [] and side.refused == []
            assert (await api.get_job(first)).state is JobState.DONE
            assert (await long_poll).jobs[0].job_id == third
        finally:
            await pilot.__aexit__(None, None, None)


async def test_a_stopping_pilot_waiting_long_poll_does_not_take_back_the_job_it_gave_up(
    live_server: LiveServer,
) -> None:
    async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
        (job_id,) = await api.submit([JobSpec(argv=["true"], walltime_s=60)])
        pilot = await pilot_client(live_server)
        other = await pilot_client(live_server)
        try:
            (claim,) = (await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000))).jobs
            long_poll = asyncio.create_task(pilot.sync(SyncRequest(free=FREE, lifetime_s=3000, wait_s=5)))
            await asyncio.sleep(0.2)
            # SIGTERM: the pilot reports its job interrupted on the side while the poll still waits.
            stop = Finish(
                attempt_id=claim.attempt_id,
                lease=claim.lease,
                outcome=Outcome.INTERRUPTED,
                reason="the pilot is stopping",
            )
            side = await pilot.sync(
                SyncRequest(free=FREE, lifetime_s=3000, finished=[stop], claim=False, draining=True)
            )
            assert side.refused == []
            assert (await long_poll).jobs == []
            assert (await api.get_job(job_id)).state is JobState.IDLE
            (again,) = (await other.sync(SyncRequest(free=FREE, lifetime_s=3000))).jobs
            assert again.job_id == job_id
            assert [a.outcome for a in await api.attempts(job_id)] == ["interrupted", None]
        finally:
            await pilot.__aexit__(None, None, None)
            await other.__aexit__(None, None, None)


@pytest.mark.parametrize(
    ("field", "sync"),
    [
        ("held[0]", '"held": [9223372036854775808]'),
        ("started[0].attempt_id", '"started": [{"attempt_id": 0, "lease": "x"}]'),
        ("finished[0].attempt_id", '"finished": [{"attempt_id": -1, "lease": "x", "outcome": "done"}]'),
    ],
)
async def test_an_attempt_number_no_database_holds_is_a_plain_400(
    live_server: LiveServer, field: str, sync: str
) -> None:
    """A pilot's sync naming an attempt outside 1..2**63-1 is refused by name, before any store sees it."""
    pilot = await pilot_client(live_server)
    try:
        token = pilot._token
        assert token is not None
        body = f'{{"free": {{"cpus": 4, "memory_mb": 4000}}, "lifetime_s": 3000, {sync}}}'.encode()
        status, answer = await raw_post(live_server, token, "/pilot/sync", body)
        assert status == 400 and answer["field"] == field
        assert (await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000))).leave is None  # the pilot goes on
    finally:
        await pilot.__aexit__(None, None, None)
