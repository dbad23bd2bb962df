"""A sync the pilot gave up on, arriving at the server after a newer sync's claim, must not requeue
the job the pilot now runs (it would run twice, or its attempt would be lost).

A real server and an in-process pilot whose channel is the real HTTP channel with one twist: the
pilot's first claiming sync is held back (to the pilot it timed out) and delivered, unchanged, only
once the pilot has received and started the job claimed by its next sync, as a slow network or a
site's relay or mailbox may deliver it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from glidein_client.pilot.channels.base import DirectChannel
from glidein_client.pilot.pilot import Pilot
from glidein_client.pilot.resources import Detected
from glidein_client.pilot.settings import PilotSettings
from glidein_client.wire.errors import ServerUnreachable
from glidein_client.wire.schema import JobSpec, JobState, PilotShape, Role, SyncRequest, SyncResponse
from tests.conftest import LiveServer


class LateChannel(DirectChannel):
    """Gives up the first claiming sync at once, and sends it to the server after the pilot started a job."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(url, token)
        self.stale: SyncRequest | None = None
        self.stale_answer: SyncResponse | None = None
        self.delivered = asyncio.Event()
        self._late: asyncio.Task[None] | None = None

    async def sync(self, req: SyncRequest) -> SyncResponse:
        if req.claim and self.stale is None:
            self.stale = req
            raise ServerUnreachable("The server did not answer in time.")
        if self.stale is not None and self._late is None and req.started:
            self._late = asyncio.create_task(self._deliver(self.stale))
        return await super().sync(req)

    async def _deliver(self, stale: SyncRequest) -> None:
        self.stale_answer = await super().sync(stale)
        self.delivered.set()


def one_slot() -> Detected:
    return Detected(
        slots=1,
        core_ids=(0,),
        memory_mb=512,
        gpu_ids=(),
        disk_mb=1000,
        end_time=time.time() + 600,
        batch_system="local",
        batch_id="local-1",
        notes=(),
    )


async def test_a_late_sync_does_not_requeue_the_job_a_newer_sync_claimed(
    live_server: LiveServer, tmp_path: Path
) -> None:
    live = live_server
    async with live.api(await live.token(Role.SITE, "local")) as site:
        await site.demand("local", PilotShape(cpus=1, memory_mb=512, disk_mb=100, walltime_s=600))
        grant = await site.new_pilot("local")
    async with live.api(await live.token(Role.USER, "alice")) as api:
        [jid] = await api.submit([JobSpec(argv=["sleep", "2"], cpus=1, memory_mb=64, disk_mb=1, walltime_s=60)])
        detected = one_slot()
        settings = PilotSettings(scratch=tmp_path / "scratch", idle_timeout_s=3.0, min_disk_mb=1, grace_s=0.5)
        settings.scratch.mkdir()
        async with LateChannel(live.url, grant.token) as channel:
            pilot = Pilot(channel, detected, settings)
            assert await asyncio.wait_for(pilot.run(), 60) == 0
            await asyncio.wait_for(channel.delivered.wait(), 10)  # its long poll may outlast the pilot
        job = await api.get_job(jid)
        attempts = await api.attempts(jid)
        assert job.state is JobState.DONE, (job, attempts)
        assert [a.outcome for a in attempts] == ["done"], attempts
        assert pilot.stats.jobs == 1
        assert channel.stale_answer is not None and channel.stale_answer.jobs == []  # nothing left to claim


class SlowReportChannel(DirectChannel):
    """Delivers a report sent beside the long poll (a job's end) only after the pilot's next claiming
    sync has been answered, as two requests on their way at once may arrive in either order."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(url, token)
        self.held_back = 0
        self._after_next_claim: asyncio.Event | None = None

    async def sync(self, req: SyncRequest) -> SyncResponse:
        if not req.claim and req.finished and self._after_next_claim is None:
            self._after_next_claim = gate = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(gate.wait(), 10)
            self.held_back += 1
            return await super().sync(req)
        gate = self._after_next_claim
        answer = await super().sync(req)
        if req.claim and gate is not None:
            self._after_next_claim = None if gate.is_set() else self._after_next_claim
            gate.set()
        return answer


async def test_a_report_overtaken_by_the_next_sync_does_not_lose_its_job(
    live_server: LiveServer, tmp_path: Path
) -> None:
    """A job starts (its start goes with the waiting long poll) and ends at once (its end goes in a
    report beside the poll); the poll comes back, and the pilot's next sync reaches the server
    before that report. The job is still the pilot's until its report is answered: it must be in
    that sync's ``held``, or the server requeues a job that already ran and refuses its report."""
    live = live_server
    async with live.api(await live.token(Role.SITE, "local")) as site:
        await site.demand("local", PilotShape(cpus=1, memory_mb=512, disk_mb=100, walltime_s=600))
        grant = await site.new_pilot("local")
    async with live.api(await live.token(Role.USER, "alice")) as api:
        ids = await api.submit(
            [JobSpec(argv=["true"], cpus=1, memory_mb=64, disk_mb=1, walltime_s=60) for _ in range(3)]
        )
        settings = PilotSettings(scratch=tmp_path / "scratch", idle_timeout_s=2.0, min_disk_mb=1, grace_s=0.5)
        settings.scratch.mkdir()
        async with SlowReportChannel(live.url, grant.token) as channel:
            pilot = Pilot(channel, one_slot(), settings)
            assert await asyncio.wait_for(pilot.run(), 60) == 0
        assert channel.held_back >= 1, "no report was overtaken: the test did not set up its race"
        for jid in ids:
            attempts = await api.attempts(jid)
            assert [a.outcome for a in attempts] == ["done"], attempts
        assert pilot.stats.jobs == 3
