"""The pilot's main loop as a state machine, driven through a scripted Channel.

The Channel is the pilot's own seam to the server, so a scripted one stands in for the server
here; the jobs themselves are real processes (``true``, ``sleep``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from glidein_client.pilot.pilot import Pilot
from glidein_client.pilot.resources import Detected
from glidein_client.pilot.settings import Phase, PilotSettings
from glidein_client.wire.errors import ConflictError, GlideinError, ServerUnreachable
from glidein_client.wire.schema import (
    ClaimedJob,
    Finish,
    InputFile,
    JobSpec,
    Outcome,
    OutputFile,
    PilotExit,
    PilotRegister,
    PilotRegistered,
    SyncRequest,
    SyncResponse,
)

Answer = SyncResponse | GlideinError | Callable[[SyncRequest], SyncResponse]


@dataclass
class ScriptedChannel:
    """Answers each sync with the next scripted answer (then with no work); records what it was sent."""

    answers: list[Answer] = field(default_factory=list)
    syncs: list[SyncRequest] = field(default_factory=list)
    exits: list[PilotExit] = field(default_factory=list)

    async def check(self) -> None:
        return None

    async def register(self, req: PilotRegister) -> PilotRegistered:
        return PilotRegistered(pilot_id=7, heartbeat_s=0.2, lease_s=5.0)

    async def sync(self, req: SyncRequest) -> SyncResponse:
        self.syncs.append(req)
        if req.wait_s:
            await asyncio.sleep(min(req.wait_s, 0.05))
        if not self.answers:
            return SyncResponse()
        answer = self.answers.pop(0)
        if isinstance(answer, GlideinError):
            raise answer
        return answer(req) if callable(answer) else answer

    async def fetch_input(self, inp: InputFile, dest: Path) -> None:
        raise AssertionError("no inputs here")

    async def upload_output(self, attempt_id: int, lease: str, name: str, path: Path) -> OutputFile:
        raise AssertionError("no outputs here")

    async def exit(self, req: PilotExit) -> None:
        self.exits.append(req)

    def finishes(self) -> dict[int, Finish]:
        return {f.attempt_id: f for req in self.syncs for f in req.finished}


def claim(attempt_id: int, argv: list[str], **spec: object) -> ClaimedJob:
    fields: dict[str, object] = {"memory_mb": 10, "walltime_s": 60, **spec}
    job = JobSpec(argv=argv, **fields)  # type: ignore[arg-type]
    return ClaimedJob(attempt_id=attempt_id, job_id=100 + attempt_id, lease=f"lease-{attempt_id}", spec=job)


def make_pilot(tmp_path: Path, channel: ScriptedChannel, *, end_in_s: float = 3600.0, idle_s: float = 0.5) -> Pilot:
    detected = Detected(
        slots=2,
        core_ids=(0,),
        memory_mb=1000,
        gpu_ids=(),
        disk_mb=10_000,
        end_time=time.time() + end_in_s,
        batch_system="local",
        batch_id="local-1",
        notes=(),
    )
    settings = PilotSettings(scratch=tmp_path, idle_timeout_s=idle_s, end_margin_s=1.0, grace_s=0.5, min_disk_mb=1)
    return Pilot(channel, detected, settings)  # type: ignore[arg-type]


async def run(pilot: Pilot, timeout_s: float = 20.0) -> int:
    return await asyncio.wait_for(pilot.run(), timeout_s)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the pilot did not get there in time")


async def test_idle_pilot_long_polls_then_leaves(tmp_path: Path) -> None:
    channel = ScriptedChannel()
    pilot = make_pilot(tmp_path, channel, idle_s=0.4)
    assert await run(pilot) == 0
    assert pilot.phase is Phase.DONE
    assert [e.reason for e in channel.exits] == ["idle for 0 s"]
    assert channel.syncs and all(s.wait_s > 0 for s in channel.syncs)  # nothing runs: every claim is a long poll


async def test_claimed_jobs_run_and_are_reported(tmp_path: Path) -> None:
    jobs = [claim(1, ["true"]), claim(2, ["false"]), claim(3, ["true"])]
    channel = ScriptedChannel([SyncResponse(jobs=jobs)])
    pilot = make_pilot(tmp_path, channel)
    assert await run(pilot) == 0
    done = channel.finishes()
    assert {a: f.outcome for a, f in done.items()} == {1: Outcome.DONE, 2: Outcome.FAILED, 3: Outcome.DONE}
    assert done[2].reason == "exited with code 1"
    started = {r.attempt_id for req in channel.syncs for r in req.started}
    assert started == {1, 2, 3}
    assert channel.exits[0].jobs_run == 3
    # Every attempt it held was named in each full sync until its report was answered.
    assert set(channel.syncs[1].held or ()) <= {1, 2, 3}
    # Each sync carries the next number, reports sent beside a long poll included.
    assert sorted(s.seq or 0 for s in channel.syncs) == list(range(1, len(channel.syncs) + 1))


async def test_stop_interrupts_running_jobs_and_returns_the_backlog(tmp_path: Path) -> None:
    jobs = [claim(i, ["sleep", "30"]) for i in (1, 2, 3)]  # two slots: the third waits in the backlog
    channel = ScriptedChannel([SyncResponse(jobs=jobs)])
    pilot = make_pilot(tmp_path, channel)
    task = asyncio.create_task(run(pilot))
    await until(lambda: len(pilot.running) == 2)
    assert pilot.phase is Phase.WORKING
    pilot.request_stop("received SIGTERM")
    assert await task == 0
    done = channel.finishes()
    assert {f.outcome for f in done.values()} == {Outcome.INTERRUPTED}
    assert set(done) == {1, 2, 3}
    assert all("the pilot is stopping: received SIGTERM" in (f.reason or "") for f in done.values())
    assert channel.exits[0].reason == "received SIGTERM"
    assert any(s.draining for s in channel.syncs)


async def test_cancel_ends_that_job_only(tmp_path: Path) -> None:
    channel = ScriptedChannel([SyncResponse(jobs=[claim(1, ["sleep", "30"]), claim(2, ["sleep", "0.5"])])])
    pilot = make_pilot(tmp_path, channel)
    task = asyncio.create_task(run(pilot))
    await until(lambda: len(pilot.running) == 2)
    channel.answers.append(SyncResponse(cancel=[1]))
    assert await task == 0
    done = channel.finishes()
    assert (done[1].outcome, done[1].reason) == (Outcome.CANCELLED, "cancelled by its owner")
    assert done[2].outcome is Outcome.DONE


async def test_unreachable_server_keeps_reports_until_it_returns(tmp_path: Path) -> None:
    away = ServerUnreachable("connection refused")

    def hand_out(req: SyncRequest) -> SyncResponse:
        return SyncResponse(jobs=[claim(1, ["true"])])

    refused: list[SyncRequest] = []

    def away_while_reporting(req: SyncRequest) -> SyncResponse:
        if req.finished and len(refused) < 2:
            refused.append(req)
            raise away
        return SyncResponse()

    # The job is handed out, then the first two syncs that report it fail: its report must arrive
    # once the server is back.
    channel = ScriptedChannel([hand_out, *[away_while_reporting] * 200])
    pilot = make_pilot(tmp_path, channel, idle_s=0.5)
    assert await run(pilot) == 0
    assert channel.finishes()[1].outcome is Outcome.DONE
    failed = [i for i, s in enumerate(channel.syncs) if s.finished]
    assert len(failed) >= 3 and len(refused) == 2  # sent twice while away, then again once back
    assert pilot.flights.backoff_s == 0.0


async def test_a_pilot_the_server_forgot_stops_at_once_and_reports_nothing(tmp_path: Path) -> None:
    channel = ScriptedChannel([SyncResponse(jobs=[claim(1, ["sleep", "30"])])])
    pilot = make_pilot(tmp_path, channel)
    task = asyncio.create_task(run(pilot))
    await until(lambda: bool(pilot.running))
    channel.answers.append(ConflictError("unknown pilot"))
    t0 = time.monotonic()
    assert await task == 0
    assert time.monotonic() - t0 < 5.0
    assert pilot.phase is Phase.DONE
    assert 1 not in channel.finishes()  # its attempt belongs to no one now: nothing to report
    assert channel.exits[0].reason == "the server no longer knows this pilot"


async def test_end_time_drains_and_refuses_jobs_that_cannot_finish(tmp_path: Path) -> None:
    long = claim(1, ["true"], walltime_s=3600)
    channel = ScriptedChannel([SyncResponse(jobs=[long])])
    pilot = make_pilot(tmp_path, channel, end_in_s=3.0, idle_s=60.0)
    assert await run(pilot) == 0
    done = channel.finishes()
    assert done[1].outcome is Outcome.INTERRUPTED
    assert done[1].reason == "it would not finish before the pilot's end"
    assert channel.exits[0].reason == "reached its end time"


async def test_black_hole_stops_taking_work(tmp_path: Path) -> None:
    channel = ScriptedChannel([SyncResponse(jobs=[claim(i, ["true"]) for i in range(1, 8)])])
    pilot = make_pilot(tmp_path, channel, idle_s=60.0)
    workdir = tmp_path / "pilot-7"
    workdir.mkdir()
    for i in range(1, 8):  # a broken node: no job directory can be made there
        (workdir / f"job-{100 + i}-{i}").write_text("in the way\n")
    assert await run(pilot) == 0
    assert channel.exits[0].reason.startswith("black hole: the last 5 jobs could not run on this node")
    outcomes = [f.outcome for f in channel.finishes().values()]
    assert outcomes == [Outcome.INTERRUPTED] * 7  # requeued by the server: not the jobs' fault


async def test_the_jobs_own_failures_do_not_make_a_black_hole(tmp_path: Path) -> None:
    channel = ScriptedChannel([SyncResponse(jobs=[claim(i, ["false"]) for i in range(1, 8)])])
    pilot = make_pilot(tmp_path, channel)
    assert await run(pilot) == 0
    assert not channel.exits[0].reason.startswith("black hole")
    assert [f.outcome for f in channel.finishes().values()] == [Outcome.FAILED] * 7


@pytest.mark.parametrize("phase", [Phase.DRAINING, Phase.GONE])
def test_phases_after_working_wait_for_running_jobs(tmp_path: Path, phase: Phase) -> None:
    pilot = make_pilot(tmp_path, ScriptedChannel())
    pilot.phase = phase
    pilot.running[1] = object()  # type: ignore[assignment]
    assert pilot._step(time.time(), time.monotonic()) is phase
    pilot.running.clear()
    assert pilot._step(time.time(), time.monotonic()) is Phase.DONE
