"""``glidein status`` and ``wait`` without ids, as ``condor_q`` users expect: the last submit and the
jobs still active, not all of history; through the real command against a real server and pilot."""

from __future__ import annotations

import json
import stat
from typing import Any

import pytest

from glidein_client.wire.schema import JobSpec, JobState, Role
from tests.e2e.test_cli import Glidein, glidein  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow]


def submitted(out: str) -> str:
    return out.split(": ")[1].strip()


def listed_ids(table: str) -> list[str]:
    """The ids in the rows of a ``glidein status`` table."""
    states = {s.value for s in JobState}
    return [w[0] for w in map(str.split, table.splitlines()) if len(w) > 1 and w[0].isdigit() and w[1] in states]


async def test_status_and_wait_default_to_the_last_submit_and_active_jobs(live_server: Any, glidein: Glidein) -> None:  # noqa: F811
    await live_server.start_pilot(cpus=2, idle_timeout_s=30, extra=("--prefetch-s", "0"))
    old_fail = submitted((await glidein("submit", "--walltime", "1m", "--", "false")).out)
    old_done = submitted((await glidein("submit", "--walltime", "1m", "--", "true")).out)
    assert (await glidein("wait", old_fail, old_done, "--timeout", "60s")).rc == 1
    new = submitted((await glidein("submit", "--walltime", "1m", "--", "sleep", "2")).out)

    r = await glidein("wait", "--timeout", "60s")  # the old failure does not make it fail
    assert r.rc == 0 and r.out.strip() == "1 job: 1 done", r.out + r.err
    r = await glidein("status")
    assert r.rc == 0 and listed_ids(r.out) == [new], r.out
    assert r.out.splitlines()[-2:] == ["1 job: 1 done", "(your last submit and active jobs; --all lists all 3 jobs)"]
    r = await glidein("--json", "status")
    assert [j["id"] for j in r.json()["jobs"]] == [int(new)]
    r = await glidein("status", "--all")
    assert listed_ids(r.out) == [old_fail, old_done, new] and r.out.splitlines()[-1] == "3 jobs: 2 done, 1 failed"

    r = await glidein("status", "--state", "idle")
    assert r.rc == 0 and r.out.strip() == "No idle jobs."
    r = await glidein("status", "--state", "failed")  # a state selects from all of history, and counts only it
    assert listed_ids(r.out) == [old_fail] and r.out.splitlines()[-1] == "1 job: 1 failed"

    noted = glidein.cwd.parent / "state" / "glidein" / "last-submit.json"
    assert stat.S_IMODE(noted.stat().st_mode) == 0o600 and stat.S_IMODE(noted.parent.stat().st_mode) == 0o700
    assert json.loads(noted.read_text()) == {live_server.url: new}

    noted.unlink()  # no last submit: the active jobs only, and here there are none
    r = await glidein("status")
    assert r.rc == 0 and r.out.strip() == "No active or just-submitted jobs; --all lists all 3 jobs."
    r = await glidein("wait")
    assert r.rc == 0 and r.out.strip() == "No active or just-submitted jobs to wait for."

    async with live_server.api(await live_server.token(Role.USER, "ann")) as ann:  # submitted elsewhere
        (big,) = await ann.submit([JobSpec(argv=["true"], cpus=64)])
    r = await glidein("status")
    assert listed_ids(r.out) == [str(big)] and " idle " in r.out.splitlines()[1]
    r = await glidein("status", "--state", "idle")
    assert listed_ids(r.out) == [str(big)] and r.out.splitlines()[-1] == "1 job: 1 idle"


async def test_status_of_a_long_queue_shows_the_newest_rows_and_counts_them_all(
    live_server: Any,
    glidein: Glidein,  # noqa: F811
) -> None:
    """A queue longer than a screen: the newest 50 of the active and last-submitted jobs, and a totals
    line counting every one of them by state, as ``condor_q`` ends with; --json and --all list them all."""
    async with live_server.api(await live_server.token(Role.USER, "ann")) as ann:
        older = await ann.submit([JobSpec(argv=["true"], cpus=64) for _ in range(70)])  # nothing runs them
        await ann.cancel(older[0])  # finished and not of the last submit: left out
    new = submitted((await glidein("submit", "--walltime", "1m", "--", "true")).out)
    assert (await glidein("cancel", new)).rc == 0
    r = await glidein("status")
    assert r.rc == 0 and listed_ids(r.out) == [str(i) for i in older[-49:]] + [new], r.out
    assert r.out.splitlines()[-3:] == [
        "... 20 earlier jobs not shown; --all lists every job.",
        "70 jobs: 1 cancelled, 69 idle",
        "(your last submit and active jobs; --all lists all 71 jobs)",
    ]
    r = await glidein("--json", "status")
    assert [j["id"] for j in r.json()["jobs"]] == [*older[1:], int(new)]
    assert r.json()["counts"] == {"idle": 69, "cancelled": 1}
    r = await glidein("status", "--state", "idle")
    assert listed_ids(r.out) == [str(i) for i in older[-50:]]
    assert r.out.splitlines()[-2:] == ["... 19 earlier jobs not shown; --all lists every job.", "69 jobs: 69 idle"]
    r = await glidein("status", "--all")
    assert len(listed_ids(r.out)) == 71 and r.out.splitlines()[-1] == "71 jobs: 2 cancelled, 69 idle"
