"""Job sandboxes on a real filesystem: recycled when a job left only its logs, removed otherwise."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from glidein_client.pilot.executor import JobProcess
from glidein_client.pilot.launch import STDERR_NAME, STDOUT_NAME, JobRun
from glidein_client.pilot.sandboxes import Sandboxes
from glidein_client.wire.schema import JobSpec, Outcome


async def run_in(sandbox: Path, argv: list[str]) -> str:
    proc = JobProcess(
        JobRun(attempt_id=1, job_id=1, spec=JobSpec(argv=argv), sandbox=sandbox, cores=frozenset(), gpus=())
    )
    await proc.start()
    result = await proc.wait()
    assert result.outcome is Outcome.DONE, result
    return result.stdout_tail


def removed(path: Path) -> bool:
    return not path.exists()


async def gone(path: Path, timeout_s: float = 5.0) -> bool:
    """The janitor thread removes it soon."""
    deadline = time.monotonic() + timeout_s
    while not removed(path):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_a_sandbox_left_with_only_logs_is_renamed_for_the_next_job_with_fresh_logs(tmp_path: Path) -> None:
    async with Sandboxes(tmp_path / "work", keep=1) as boxes:
        first = boxes.make("job-1-1")
        assert await run_in(first, ["echo", "a long line from the first job"]) == "a long line from the first job\n"
        inode = first.stat().st_ino
        boxes.release(first)
        second = boxes.make("job-2-2")
        assert not first.exists() and second.stat().st_ino == inode  # the same directory, renamed
        assert await run_in(second, ["true"]) == ""  # the first job's output is gone
        assert await run_in(second, ["cat", STDOUT_NAME]) == ""
    assert not (tmp_path / "work").exists()


async def test_a_sandbox_with_anything_else_in_it_is_removed(tmp_path: Path) -> None:
    async with Sandboxes(tmp_path / "work", keep=4) as boxes:
        kept_output = boxes.make("job-1-1")
        await run_in(kept_output, ["sh", "-c", "echo x > result.txt"])
        boxes.release(kept_output)
        assert await gone(kept_output)
        fresh = boxes.make("job-2-2")
        assert sorted(os.listdir(fresh)) == []  # made anew, not the one with result.txt


async def test_logs_replaced_by_links_are_never_reused(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    async with Sandboxes(tmp_path / "work", keep=1) as boxes:
        box = boxes.make("job-1-1")
        await run_in(box, ["true"])
        (box / STDERR_NAME).unlink()
        (box / STDERR_NAME).symlink_to(precious)
        boxes.release(box)
        assert await gone(box)
        await run_in(boxes.make("job-2-2"), ["true"])
    assert precious.read_text() == "keep me"


async def test_only_as_many_spares_as_slots_and_unstarted_jobs_are_not_reused(tmp_path: Path) -> None:
    async with Sandboxes(tmp_path / "work", keep=1) as boxes:
        a, b, c = (boxes.make(f"job-{i}-{i}") for i in (1, 2, 3))
        for box in (a, b, c):
            (box / STDOUT_NAME).touch()
            (box / STDERR_NAME).touch()
        boxes.release(a)
        boxes.release(b)  # one spare is enough for one slot
        boxes.release(c, reuse=False)
        assert await gone(b) and await gone(c) and a.exists()
