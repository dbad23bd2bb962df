"""What an analyser gets back from jobs that failed, through the real ``glidein`` command and real pilots:
the outputs a failed job left, and ``fetch`` saying plainly when it fetched nothing."""

from __future__ import annotations

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
