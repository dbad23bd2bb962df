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
