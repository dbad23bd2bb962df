"""What a new analyser meets through the real ``glidein`` command: defaults that work together,
plain notes when a job cannot run, failures that are the job's own."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from glidein_client.wire.schema import PilotShape, Role
from tests.e2e.test_cli import Glidein, glidein  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow]


async def test_a_job_no_pilot_has_time_for_is_not_demanded_and_says_why(live_server: Any, glidein: Glidein) -> None:  # noqa: F811
    site_token = await live_server.token(Role.SITE, "local")
    hour = PilotShape(cpus=2, memory_mb=4096, disk_mb=10240, walltime_s=3600)
    async with live_server.api(site_token) as site:
        await site.demand("local", hour)

    r = await glidein("submit", "--", "true")  # the default walltime: 1h, as long as the pilots
    assert r.rc == 0, r.err
    job_id = r.out.split(": ")[1].strip()
    async with live_server.api(site_token) as site:
        demand = await site.demand("local", hour)
    assert (demand.jobs, demand.pilots, demand.unfit_jobs) == (0, 0, 1)

    note = (
        "No site can run this job: it asks for a walltime of 1h, and the longest pilot (site local) has 1h "
        "minus 1m for its start-up and end margin. It stays queued; lower --walltime to at most 59m, "
        "or ask an operator for longer pilots."
    )
    r = await glidein("logs", job_id)
    assert r.out.strip() == f"Job {job_id} has not run yet (idle): {note}"
    r = await glidein("wait", job_id, "--timeout", "2s")
    assert r.rc == 3 and f"note: 1 job ({job_id}): {note}" in r.err

    r = await glidein("submit", "--walltime", "59m", "--", "true")
    async with live_server.api(site_token) as site:
        demand = await site.demand("local", hour)
    assert (demand.jobs, demand.pilots, demand.unfit_jobs) == (1, 1, 1)


async def test_a_users_failing_jobs_run_once_and_leave_the_pilot_healthy(live_server: Any, glidein: Glidein) -> None:  # noqa: F811
    r = await glidein("submit", "--walltime", "1m", "--", "false")
    first = int(r.out.split(": ")[1])
    for _ in range(5):
        await glidein("submit", "--walltime", "1m", "--", "no-such-command-here")
    pilot = await live_server.start_pilot(cpus=1, idle_timeout_s=2, extra=("--prefetch-s", "0"))
    r = await glidein("wait", f"{first}-{first + 5}", "--timeout", "60s")
    assert r.rc == 1 and "6 jobs: 6 failed" in r.out
    r = await glidein("logs", str(first + 5))
    assert "attempt 1 of 1" in r.out
    # without isolation the pilot finds no such command; under bubblewrap, bwrap says so and exits 1
    assert "reason:    command 'no-such-command-here' was not found" in r.out or (
        "reason:    exited with code 1" in r.out and "bwrap: execvp no-such-command-here" in r.out
    )
    assert await pilot.wait() == 0  # left when idle, not as a black hole
    assert "black hole" not in live_server.pilot_logs()


async def test_a_bad_input_url_fails_the_attempt_naming_input_url_and_status(
    live_server: Any,
    glidein: Glidein,  # noqa: F811
) -> None:
    async def not_found(request: web.Request) -> web.Response:
        return web.Response(
            status=404, text="<!DOCTYPE HTML><html><body>Not here</body></html>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/{name}", not_found)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        missing = f"http://127.0.0.1:{port}/missing.dat"
        nowhere = "http://no-such-host.invalid/lookup.dat"
        ids = []
        for url in (missing, nowhere):
            r = await glidein("submit", "--walltime", "1m", "-i", url, "--", "true")
            ids.append(r.out.split(": ")[1].strip())
        await live_server.start_pilot(cpus=2, idle_timeout_s=2, extra=("--prefetch-s", "0"))
        r = await glidein("wait", *ids, "--timeout", "45s")
        assert r.rc == 1 and "2 jobs: 2 failed" in r.out, r.out + r.err
        r = await glidein("logs", ids[0])
        assert (
            f"reason:    staging failed: input missing.dat: the input URL {missing} answered HTTP 404 Not Found"
            in r.out
        )
        assert "DOCTYPE" not in r.out
        r = await glidein("logs", ids[1])
        why = f"input lookup.dat: the host no-such-host.invalid of the input URL {nowhere} does not resolve"
        assert f"reason:    staging failed: {why}" in r.out
        assert "server unreachable" not in live_server.pilot_logs()
    finally:
        await runner.cleanup()


async def test_wait_status_cancel_and_fetch_speak_of_what_was_asked(live_server: Any, glidein: Glidein) -> None:  # noqa: F811
    r = await glidein("submit", "echo", "hi")
    assert r.rc == 2 and "put it after '--': glidein submit [options] -- echo hi" in r.err
    await live_server.start_pilot(cpus=1, idle_timeout_s=30, extra=("--prefetch-s", "0"))
    r = await glidein("submit", "--walltime", "1m", "-o", "out.txt", "--", "false")
    failed = r.out.split(": ")[1].strip()
    assert (await glidein("wait", failed, "--timeout", "60s")).rc == 1
    r = await glidein("fetch", failed, "-d", str(glidein.cwd / "out"))
    assert r.rc == 1 and f"error: job {failed}: failed (exit code 1), no outputs came back (asked for out.txt)" in r.err

    r = await glidein("submit", "--walltime", "1m", "--", "sleep", "4")
    done = r.out.split(": ")[1].strip()
    r = await glidein("wait", "--timeout", "60s")  # the active job only: the old failure does not count
    assert r.rc == 0 and r.out.strip() == "1 job: 1 done", r.out + r.err
    again = await glidein("wait")  # the last submit's jobs, finished by now
    assert again.rc == 0 and again.out.strip() == "1 job: 1 done"
    r = await glidein("status", "--state", "idle")
    assert r.rc == 0 and r.out.strip() == "No idle jobs."
    r = await glidein("cancel", done)
    assert r.rc == 1 and f"error: job {done} had already finished (done); nothing was cancelled" in r.err
