"""The ``glidein`` command as a subprocess against a real server and real pilots."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from glidein_client.wire.codec import decode
from glidein_client.wire.schema import JobList, Role

pytestmark = [pytest.mark.slow]

ANALYSE = """\
import sys
text = open(sys.argv[1]).read()
print("analysing", sys.argv[1])
print("words:", len(text.split()), file=sys.stderr)
with open("result.txt", "w") as fh:
    fh.write(text.upper())
"""


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Glidein:
    """Runs ``python -m glidein_client.user.cli`` in ``cwd`` with a clean environment."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env

    async def __call__(self, *args: str, env: dict[str, str] | None = None, timeout_s: float = 90) -> Result:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "glidein_client.user.cli",
            *args,
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        result = Result(proc.returncode, out.decode(), err.decode())
        assert "Traceback" not in result.err, result.err
        return result


@pytest.fixture
async def glidein(live_server: Any, tmp_path: Path) -> Glidein:
    token = await live_server.token(Role.USER, "ann")
    token_file = live_server.write_secret("ann.token", token)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIDEIN_")}
    env.update(
        XDG_CONFIG_HOME=str(tmp_path / "no-config"),
        XDG_STATE_HOME=str(tmp_path / "state"),
        GLIDEIN_URL=live_server.url,
        GLIDEIN_TOKEN_FILE=str(token_file),
    )
    return Glidein(work, env)


async def test_submit_wait_status_fetch_logs(live_server: Any, glidein: Glidein) -> None:
    (glidein.cwd / "data.txt").write_text("one two three\n")
    (glidein.cwd / "analyse.py").write_text(ANALYSE)
    await live_server.start_pilot(cpus=2, idle_timeout_s=60)

    r = await glidein(
        "submit", "--cpus", "1", "--memory", "256M", "--walltime", "2m", "--disk", "100M",
        "-i", "data.txt", "-i", "analyse.py", "-o", "result.txt", "--label", "dataset=run42",
        "--", sys.executable, "analyse.py", "data.txt",
    )  # fmt: skip
    assert r.rc == 0, r.err
    assert r.out.startswith("Submitted 1 job: ")
    job_id = r.out.split(": ")[1].strip()

    r = await glidein("wait", job_id, "--timeout", "60s")
    assert r.rc == 0, r.out + r.err
    assert "1 job: 1 done" in r.out

    r = await glidein("status", job_id)
    assert r.rc == 0
    header, row, counts = r.out.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "CPUS"]
    assert row.split()[:4] == [job_id, "done", "1", "256M"]
    assert counts == "1 job: 1 done"

    r = await glidein("status", "--json", "--label", "dataset=run42")
    listing = decode(r.out, JobList)
    assert [j.id for j in listing.jobs] == [int(job_id)]
    assert listing.counts == {"done": 1}

    dest = glidein.cwd / "out"
    r = await glidein("fetch", job_id, "-d", str(dest))
    assert r.rc == 0, r.err
    assert (dest / job_id / "result.txt").read_text() == "ONE TWO THREE\n"
    assert "Fetched 1 file" in r.out
    r = await glidein("--json", "fetch", job_id, "-d", str(dest))
    fetched = r.json()["fetched"]
    assert [(f["id"], f["name"], f["fresh"]) for f in fetched] == [(int(job_id), "result.txt", False)]

    r = await glidein("logs", job_id)
    assert r.rc == 0
    assert "attempt 1 of 1" in r.out and "site local" in r.out
    assert "outcome:   done" in r.out and "exit code: 0" in r.out
    assert "analysing data.txt" in r.out and "words: 3" in r.out
    r = await glidein("logs", job_id, "--json")
    (attempt,) = r.json()
    assert attempt["outcome"] == "done" and attempt["exit_code"] == 0


async def test_job_file_with_count(live_server: Any, glidein: Glidein) -> None:
    (glidein.cwd / "shared.txt").write_text("shared input\n")
    (glidein.cwd / "jobs.toml").write_text(
        textwrap.dedent(
            """
            [defaults]
            memory = "128M"
            disk = "100M"
            walltime = "1m"
            labels = { dataset = "batch" }

            [[job]]
            argv = ["sh", "-c", "cat shared.txt > out-{index}.txt; echo {index} >> out-{index}.txt"]
            inputs = ["shared.txt"]
            outputs = ["out-{index}.txt"]
            count = 3
            """
        )
    )
    await live_server.start_pilot(cpus=2, idle_timeout_s=60)
    r = await glidein("submit", "jobs.toml", "--json")
    assert r.rc == 0, r.err
    ids = r.json()["ids"]
    assert len(ids) == 3

    r = await glidein("wait", "--label", "dataset=batch", "--timeout", "60s", "--json")
    assert r.rc == 0, r.out + r.err
    assert r.json() == {"total": 3, "counts": {"done": 3}, "timed_out": False, "failed_ids": []}

    r = await glidein("fetch", f"{ids[0]}-{ids[-1]}", "-d", "out")
    assert r.rc == 0, r.err
    for i, job_id in enumerate(ids):
        assert (glidein.cwd / "out" / str(job_id) / f"out-{i}.txt").read_text() == f"shared input\n{i}\n"


async def test_failure_retry_and_cancel(live_server: Any, glidein: Glidein) -> None:
    await live_server.start_pilot(cpus=2, idle_timeout_s=60)
    r = await glidein(
        "submit", "--max-retries", "0", "--walltime", "1m", "--disk", "100M", "--", "sh", "-c", "echo oops >&2; exit 3"
    )
    assert r.rc == 0, r.err
    failing = r.out.split(": ")[1].strip()

    r = await glidein("wait", failing, "--timeout", "60s")
    assert r.rc == 1
    assert "1 failed" in r.out and f"glidein logs {failing}" in r.out

    r = await glidein("logs", failing)
    assert "exit code: 3" in r.out and "oops" in r.out

    # A job no site can run stays idle and says why.
    r = await glidein("submit", "--cpus", "64", "--", "true")
    big = r.out.split(": ")[1].strip()
    r = await glidein("status", big)
    assert "idle" in r.out and "No site can run this job" in r.out

    r = await glidein("cancel", big, "999999")
    assert r.rc == 1
    assert f"job {big}: cancelled" in r.out
    assert "error: Job 999999 does not exist" in r.err

    r = await glidein("retry", big, "--json")
    assert r.rc == 0, r.err
    assert r.json() == {"jobs": [{"id": int(big), "state": "idle"}]}

    r = await glidein("wait", big, "--timeout", "2s")
    assert r.rc == 3
    assert "Gave up waiting" in r.out


async def test_bad_job_names_the_field(glidein: Glidein) -> None:
    (glidein.cwd / "jobs.toml").write_text('[[job]]\nargv = ["true"]\n[[job]]\nargv = ["true"]\nmemory = "2X"\n')
    r = await glidein("submit", "jobs.toml")
    assert r.rc == 1
    assert r.err.startswith("error: jobs.toml: job[1].memory: cannot read '2X' as a size.")

    r = await glidein("submit", "-o", "../escape", "--", "true")
    assert r.rc == 1
    assert "outputs[0]" in r.err and "outside the job's sandbox" in r.err

    r = await glidein("submit", "-i", "missing.txt", "--", "true")
    assert r.rc == 1
    assert "inputs[0]: cannot read" in r.err

    r = await glidein("submit", "--memory", "lots", "--", "true")
    assert r.rc == 2
    assert "argument --memory" in r.err


async def test_wrong_token_and_missing_config(live_server: Any, glidein: Glidein) -> None:
    r = await glidein("status", env={"GLIDEIN_TOKEN": "not-a-token"})
    assert r.rc == 1
    lines = r.err.splitlines()
    assert lines[0] == "error: The token is not valid (unknown or revoked)."
    assert lines[1].startswith("hint: ") and "GLIDEIN_TOKEN" in lines[1]

    r = await glidein("status", env={"GLIDEIN_URL": ""})
    assert r.rc == 1
    assert r.err.startswith("error: No glidein server URL is set.")

    loose = live_server.write_secret("loose.token", "x")
    loose.chmod(0o644)
    r = await glidein("status", env={"GLIDEIN_TOKEN_FILE": str(loose)})
    assert r.rc == 1
    assert "can be read by other users" in r.err and f"chmod 600 {loose}" in r.err
