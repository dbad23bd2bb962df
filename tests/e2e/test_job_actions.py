"""``glidein hold|release|retry|cancel|fetch|wait`` by ids and by label, as subprocesses against a real
server and a real pilot: a held running job is stopped and stays held; a retry's new requirements
and every act's reason land in the job's history; another user's jobs are out of reach."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from glidein_client.wire.schema import Role
from tests.e2e.test_cli import Glidein, glidein

__all__ = ["glidein"]  # the fixture
pytestmark = [pytest.mark.slow]


async def state_of(glidein: Glidein, job_id: str) -> dict[str, Any]:
    r = await glidein("status", job_id, "--json")
    assert r.rc == 0, r.err
    [job] = r.json()["jobs"]
    return job  # type: ignore[no-any-return]


async def until(glidein: Glidein, job_id: str, state: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = await state_of(glidein, job_id)
        if job["state"] == state or time.monotonic() > deadline:
            assert job["state"] == state, job
            return job
        await asyncio.sleep(0.2)


async def test_hold_stops_a_running_job_release_runs_it_again(live_server: Any, glidein: Glidein) -> None:
    await live_server.start_pilot(cpus=2, idle_timeout_s=60)
    r = await glidein(
        "submit", "--walltime", "2m", "--disk", "100M", "--label", "dataset=d1", "--label", "kind=slow",
        "--", "sleep", "120",
    )  # fmt: skip
    assert r.rc == 0, r.err
    slow = r.out.split(": ")[1].strip()
    r = await glidein(
        "submit", "--walltime", "2m", "--disk", "100M", "--label", "dataset=d1", "--label", "kind=quick",
        "-o", "out.txt", "--", "sh", "-c", "echo made > out.txt",
    )  # fmt: skip
    quick = r.out.split(": ")[1].strip()
    await until(glidein, slow, "running")

    held_at = time.monotonic()
    r = await glidein("hold", slow, "--reason", "input is being rewritten")
    assert (r.rc, r.out.strip()) == (0, f"job {slow}: held"), r.err
    # The pilot hears at once (the fast cancel path) and stops it; the job stays held, not failed.
    while True:
        r = await glidein("show", slow, "--json")
        attempts = r.json()["attempts"]
        if attempts[0].get("outcome") or time.monotonic() - held_at > 15:
            break
        await asyncio.sleep(0.2)
    assert attempts[0].get("outcome"), attempts
    job = await state_of(glidein, slow)
    assert job["state"] == "held" and job.get("retries_used", 0) == 0
    assert [(e["action"], e["by"], e["reason"]) for e in job["history"]] == [
        ("held", "ann", "input is being rewritten")
    ]
    r = await glidein("status")  # without ids: the last submit (the quick job) and active jobs, held ones too
    assert f"{slow}  held" in r.out and "held by ann: input is being rewritten" in r.out
    r = await glidein("show", slow)
    assert "history:" in r.out and "held by ann: input is being rewritten" in r.out
    r = await glidein("logs", slow)
    assert "held by ann: input is being rewritten" in r.out

    # By label: both d1 jobs carry kind=quick or kind=slow; only the quick one is waited on and fetched.
    r = await glidein("wait", "--label", "dataset=d1", "--label", "kind=quick", "--timeout", "60s")
    assert r.rc == 0, r.out + r.err
    assert "1 job: 1 done" in r.out
    dest = glidein.cwd / "out"
    r = await glidein("fetch", "--label", "dataset=d1", "--label", "kind=quick", "-d", str(dest))
    assert r.rc == 0, r.err
    assert (dest / quick / "out.txt").read_text() == "made\n" and not (dest / slow).exists()

    # A finished job cannot be held: the error names its state.
    r = await glidein("hold", quick)
    assert r.rc == 1
    assert f"Job {quick} is done; only idle or running jobs can be held." in r.err

    r = await glidein("release", "--label", "dataset=d1", "--reason", "input is ready")
    assert (r.rc, r.out.strip()) == (0, f"job {slow}: idle"), r.err
    await until(glidein, slow, "running")
    # Held and released at once: the release waits the moment the pilot takes to stop the attempt.
    r = await glidein("hold", slow)
    assert r.rc == 0, r.err
    r = await glidein("release", slow)
    assert (r.rc, r.out.strip()) == (0, f"job {slow}: idle"), r.err
    r = await glidein("cancel", "--label", "dataset=d1")
    assert (r.rc, r.out.strip()) == (0, f"job {slow}: cancelled"), r.err
    job = await state_of(glidein, slow)
    assert [e["action"] for e in job["history"]] == ["held", "released", "held", "released"]


async def test_retry_with_new_requirements_by_label(live_server: Any, glidein: Glidein) -> None:
    ids = []
    for _ in range(2):
        r = await glidein("submit", "--label", "dataset=d2", "--walltime", "10m", "--", "true")
        ids.append(r.out.split(": ")[1].strip())
    r = await glidein("cancel", "--label", "dataset=d2")
    assert r.rc == 0 and r.out.split("\n")[:2] == [f"job {i}: cancelled" for i in ids], r.err
    await live_server.token(Role.SITE, "big")  # a site the server knows

    r = await glidein(
        "retry", "--label", "dataset=d2", "--memory", "4G", "--walltime", "2h", "--cpus", "2", "--site", "big",
        "--reason", "needs more room",
    )  # fmt: skip
    assert r.rc == 0, r.err
    changed = "cores 1 -> 2, memory 1G -> 4G, walltime 10m00s -> 2h00m, sites any -> big"
    assert r.out.splitlines()[0] == f"job {ids[0]}: idle ({changed})"
    job = await state_of(glidein, ids[1])
    assert (job["spec"]["cpus"], job["spec"]["memory_mb"], job["spec"]["walltime_s"]) == (2, 4096, 7200)
    assert job["spec"]["sites"] == ["big"]
    [retried] = job["history"]
    assert (retried["action"], retried["by"], retried["reason"]) == ("retried", "ann", "needs more room")
    assert {"field": "memory_mb", "old": 1024, "new": 4096} in retried["changes"]
    r = await glidein("show", ids[1])
    assert "retried by ann: needs more room (cores 1 -> 2, memory 1G -> 4G" in r.out
    assert "asked for: 2 cores, 4G memory" in r.out

    # Held jobs are retried too; checks come first, as a submit's do.
    r = await glidein("hold", ids[0])
    assert r.rc == 0, r.err
    r = await glidein("retry", ids[0], "--site", "nowhere")
    assert r.rc == 1 and "There is no site named 'nowhere'." in r.err and "big" in r.err
    r = await glidein("retry", ids[0], "--walltime", "40d")
    assert r.rc == 1 and "walltime_s" in r.err
    r = await glidein("retry", ids[0], "--memory", "lots")
    assert r.rc == 2 and "--memory" in r.err
    r = await glidein("retry", ids[0], "--site", "any")
    assert r.rc == 0 and r.out.strip() == f"job {ids[0]}: idle (sites big -> any)", r.err

    # Another user reaches none of them, by id or by label.
    bob_token = live_server.write_secret("bob.token", await live_server.token(Role.USER, "bob"))
    bob = Glidein(glidein.cwd, {**glidein.env, "GLIDEIN_TOKEN_FILE": str(bob_token)})
    r = await bob("hold", ids[0])
    assert r.rc == 1 and f"Job {ids[0]} does not exist or is not yours." in r.err
    r = await bob("cancel", "--label", "dataset=d2")
    assert r.rc == 1 and "No job of yours carries dataset=d2." in r.err
    assert (await state_of(glidein, ids[0]))["state"] == "idle"

    # A label that selects nothing, or nothing the action applies to, is a plain error.
    r = await glidein("wait", "--label", "dataset=none")
    assert r.rc == 1 and "No job of yours carries dataset=none." in r.err
    r = await glidein("release", "--label", "dataset=d2")
    assert r.rc == 1 and "None of the 2 jobs carrying dataset=d2 is held (2 idle); nothing to release." in r.err
    r = await glidein("hold")
    assert r.rc == 2 and "give job ids" in r.err
