"""What an analyser gets back from jobs that failed, through the real ``glidein`` command and real pilots:
the outputs a failed job left, and ``fetch`` saying plainly when it fetched nothing."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tests.e2e.test_cli import Glidein, glidein  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow]


def submitted(out: str) -> str:
    return out.split(": ")[1].strip()


async def test_a_failed_job_brings_back_the_outputs_it_left(live_server: Any, glidein: Glidein) -> None:  # noqa: F811
    await live_server.start_pilot(cpus=2, idle_timeout_s=30, extra=("--prefetch-s", "0"))
    half = "echo half done > part.txt; mkdir -p sub; echo deep > sub/deep.txt; exit 3"
    r = await glidein(
        "submit", "--walltime", "1m", "-o", "part.txt", "-o", "sub/deep.txt", "-o", "never.txt",
        "--", "sh", "-c", half,
    )  # fmt: skip
    failed = submitted(r.out)
    r = await glidein("submit", "--walltime", "1m", "-o", "out.txt", "--", "false")
    empty = submitted(r.out)
    r = await glidein("submit", "--walltime", "1m", "-o", "a.txt", "-o", "b.txt", "--", "sh", "-c", "echo a > a.txt")
    short = submitted(r.out)  # exits 0 without one of its outputs: failed, the other comes back
    r = await glidein("wait", failed, empty, short, "--timeout", "60s")
    assert r.rc == 1 and "3 jobs: 3 failed" in r.out, r.out + r.err

    dest = glidein.cwd / "got"
    r = await glidein("fetch", failed, "-d", str(dest))
    assert r.rc == 0, r.out + r.err
    assert (dest / failed / "part.txt").read_text() == "half done\n"
    assert (dest / failed / "sub" / "deep.txt").read_text() == "deep\n"
    assert not (dest / failed / "never.txt").exists()
    assert (
        f"job {failed}: failed (exit code 3); these are the outputs it left (it left no never.txt). "
        f"See: glidein logs {failed}"
    ) in r.out
    assert f"Fetched 2 files (15 B) into {dest}" in r.out

    r = await glidein("--json", "fetch", failed, "-d", str(dest))
    assert r.rc == 0
    got = r.json()
    assert [(f["name"], f["job"], f["fresh"]) for f in got["fetched"]] == [
        ("part.txt", "failed", False),
        ("sub/deep.txt", "failed", False),
    ]

    r = await glidein("fetch", empty, "-d", str(dest))  # asked for out.txt, got nothing
    assert r.rc == 1
    assert r.out.strip() == "Nothing was fetched."
    assert r.err.strip() == f"error: job {empty}: failed (exit code 1), no outputs came back (asked for out.txt)"

    r = await glidein("fetch", short, "-d", str(dest))
    assert r.rc == 0 and (dest / short / "a.txt").read_text() == "a\n"
    why = "failed (the job did not produce b.txt)"
    assert f"job {short}: {why}; these are the outputs it left (it left no b.txt)" in r.out

    r = await glidein("show", failed)
    assert "(its result was kept)" in r.out  # the failed attempt is the one whose outputs came back


async def test_a_job_out_of_memory_is_retried_at_its_peak_and_shows_what_was_asked(
    live_server: Any,
    glidein: Glidein,  # noqa: F811
) -> None:
    await live_server.start_pilot(cpus=1, memory_mb=2048, idle_timeout_s=30, extra=("--prefetch-s", "0"))
    hog = "import time; x = b'1' * (300 << 20); time.sleep(2)"  # 300 MB, held long enough to be seen
    r = await glidein("submit", "--memory", "100M", "--walltime", "1m", "--", sys.executable, "-c", hog)
    job = submitted(r.out)
    r = await glidein("wait", job, "--timeout", "90s")
    assert r.rc == 0 and "1 job: 1 done" in r.out, r.out + r.err

    got = (await glidein("--json", "status", job)).json()["jobs"][0]
    grown = got["spec"]["memory_mb"]
    assert got["asked"] == {"memory_mb": 100} and grown >= 300 * 1.25  # the measured peak plus a margin
    r = await glidein("status", job)
    row = r.out.splitlines()[1]
    assert f" {grown}M (asked 100M) " in row, r.out
    r = await glidein("show", job)
    assert f"asked for: 1 core, {grown}M memory (asked 100M), 0 GPUs, walltime 60s\n" in r.out, r.out
    # It may grow twice: killed while still filling its memory, it used less than its peak the first time.
    grew = [line for line in r.out.splitlines() if " grown by server: " in line]
    assert grew and "used" in grew[0] and "more than its 100 MB" in grew[0], r.out
    assert all("(asked for 100 MB, used " in line for line in grew), grew  # the user's own request, each time
    assert grew[-1].endswith(f" -> {grown}M)"), grew
