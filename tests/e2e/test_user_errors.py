"""Mistakes an analyser makes, through the real ``glidein`` command: every problem of a job file at
once, usage errors as JSON for scripts, and ``cancel`` of jobs that had already finished."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from tests.e2e.test_cli import Glidein, glidein  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow]

BAD_JOBS = """\
[defaults]
walltime = "10m"
cpu = 2

[[job]]
argv = ["true"]
memory = "2X"
cpus = "four"

[[job]]
argv = ["true"]

[[job]]
script = "run.sh"
ouputs = ["x"]

[[job]]
argv = ["echo", "{index}"]
count = 3
outputs = ["/etc/passwd"]
"""


async def test_a_job_file_reports_every_problem_at_once(glidein: Glidein) -> None:  # noqa: F811
    (glidein.cwd / "jobs.toml").write_text(BAD_JOBS)
    r = await glidein("submit", "jobs.toml")
    assert r.rc == 1 and r.out == ""
    lines = r.err.splitlines()
    assert lines[0] == "error: jobs.toml: 5 problems; nothing was submitted:"
    assert lines[1].startswith("  defaults.cpu: unknown key 'cpu' (did you mean 'cpus'?)")
    assert lines[2].startswith("  job[0].memory: cannot read '2X' as a size")
    assert lines[3].startswith("  job[0].cpus: Expected `int`, got `str`")
    assert lines[4].startswith("  job[2].ouputs: unknown key 'ouputs' (did you mean 'outputs'?)")
    assert lines[5].startswith("  job[3].outputs[0]: ") and "(in the copy with index 0)" in lines[5]
    assert lines[6] == "hint: Fix them all, then submit again."
    assert len(lines) == 7  # the copies of job[3] share one line

    r = await glidein("--json", "submit", "jobs.toml")
    assert r.rc == 1
    got = r.json()
    assert got["kind"] == "ValidationError" and got["error"].startswith("jobs.toml: 5 problems")
    assert [e["field"] for e in got["errors"]] == [
        "defaults.cpu",
        "job[0].memory",
        "job[0].cpus",
        "job[2].ouputs",
        "job[3].outputs[0]",
    ]

    # With the keys right, the files it names are all checked too: each missing one is named.
    (glidein.cwd / "jobs.toml").write_text(
        textwrap.dedent("""\
        [[job]]
        argv = ["true"]
        inputs = ["here.txt", "gone.txt"]
        [[job]]
        script = "missing.sh"
        """)
    )
    (glidein.cwd / "here.txt").write_text("x")
    r = await glidein("submit", "jobs.toml")
    assert r.rc == 1
    lines = r.err.splitlines()
    assert lines[0].endswith("jobs.toml: 2 problems; nothing was submitted:")
    assert lines[1].startswith(f"  job[0].inputs[1]: cannot read {glidein.cwd / 'gone.txt'}")
    assert lines[2].startswith(f"  job[1].script: cannot read {glidein.cwd / 'missing.sh'}")


async def test_usage_errors_are_json_for_scripts_and_plain_for_people(glidein: Glidein) -> None:  # noqa: F811
    r = await glidein("status", "--json", "--state", "sleeping")
    assert r.rc == 2
    got = json.loads(r.out)
    assert got["kind"] == "UsageError" and "invalid choice: 'sleeping'" in got["error"]
    assert got["hint"] == "See: glidein status --help"
    assert "invalid choice" in r.err  # and the usual usage text for a person

    r = await glidein("--json", "submit", "echo", "hi")
    assert r.rc == 2
    assert r.json()["error"].endswith("put it after '--': glidein submit [options] -- echo hi")

    r = await glidein("submit", "--json", "--", "python3", "--json")  # the job's own --json is its own
    assert r.rc == 0 and "ids" in r.json()


async def test_cancel_of_a_mix_cancels_what_it_can_and_names_the_rest(live_server: Any, glidein: Glidein) -> None:  # noqa: F811
    await live_server.start_pilot(cpus=1, idle_timeout_s=30, extra=("--prefetch-s", "0"))
    done = (await glidein("submit", "--walltime", "1m", "--", "true")).out.split(": ")[1].strip()
    assert (await glidein("wait", done, "--timeout", "60s")).rc == 0
    big = (await glidein("submit", "--cpus", "64", "--", "true")).out.split(": ")[1].strip()

    r = await glidein("cancel", done, big)
    assert r.rc == 1
    assert r.out.strip() == f"job {big}: cancelled"
    assert r.err.strip() == f"error: job {done} had already finished (done); nothing was cancelled"
    r = await glidein("--json", "cancel", done)
    assert r.rc == 1
    assert r.json()["jobs"][0]["error"] == f"job {done} had already finished (done); nothing was cancelled"
