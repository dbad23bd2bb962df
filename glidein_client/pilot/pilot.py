"""The pilot's main loop: claim jobs that fit, run them pinned to their cores, report, repeat.

Reports, heartbeat and claims travel together in one ``sync`` round trip, sent whenever
there is news; while it is in flight, jobs keep starting from a short local backlog. The
backlog holds work only for jobs seen to be short (about ``prefetch_s`` seconds of work per
slot), so long jobs are never held by a pilot that cannot start them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections import Counter

from glidein_client.pilot import leftovers
from glidein_client.pilot.attempt import Attempts, AttemptSettings, Running, finish_report, patiently
from glidein_client.pilot.backlog import Backlog
from glidein_client.pilot.channels.base import Channel
from glidein_client.pilot.drainfile import DrainFile
from glidein_client.pilot.executor import RunResult
from glidein_client.pilot.flights import Flight, Flights
from glidein_client.pilot.partition import SlotPool
from glidein_client.pilot.resources import Detected
from glidein_client.pilot.selftest import self_test
from glidein_client.pilot.settings import Phase, PilotSettings
from glidein_client.pilot.stats import WorkStats
from glidein_client.wire.errors import ConflictError, GlideinError, ServerUnreachable
from glidein_client.wire.schema import (
    AttemptRef,
    ClaimedJob,
    Finish,
    Outcome,
    OutputFile,
    PilotExit,
    PilotRegister,
    Resources,
    SyncRequest,
    SyncResponse,
)

log = logging.getLogger(__name__)
REPORT_DELAY_S = 0.05
REPORT_BATCH = 64
#: While jobs run, a sync (a long poll) is always open, so a cancel reaches the pilot at once;
#: the next one goes this long after the last was sent, at the earliest.
LISTEN_GAP_S = 0.25


class Pilot:
    def __init__(self, channel: Channel, detected: Detected, settings: PilotSettings) -> None:
        self.channel = channel
        self.res = detected
        self.settings = settings
        self.pool = SlotPool(detected.slots, detected.gpu_ids)
        self.mem_free = detected.memory_mb
        self.disk_free = detected.disk_mb
        self.end_time = detected.end_time if detected.end_time is not None else time.time() + 30 * 86400
        self.backlog = Backlog()
        self.running: dict[int, Running] = {}
        self.started: list[AttemptRef] = []
        self.finished: list[Finish] = []
        self.stale: set[int] = set()
        self.stats = WorkStats()
        self.heartbeat_s = 10.0
        self.pilot_id = 0
        self._waiter: asyncio.Future[None] | None = None  # the main loop's sleep; _poke ends it
        self.phase = Phase.WORKING
        self.flights = Flights()
        self._stop_reason: str | None = None
        self._idle_since = time.monotonic()
        self._drain_deadline = math.inf
        self._finish_by = 0.0  # a graceful stop: running jobs that end before this finish (0: none)
        self._drain_file = DrainFile(settings.drain_file)  # written by `glidein-client drain`
        self._server_empty = False  # the last claim found no work
        self._server_away = False  # the last sync could not reach the server (logged once)
        # Attempts whose reports are on their way, counted per report: a job's start may travel in the
        # long poll while its end travels beside it, and it stays held until both are answered.
        self._reporting: Counter[int] = Counter()
        self._seq = 0  # syncs sent so far: each carries the next number
        self.attempts = Attempts(
            channel,
            AttemptSettings(
                poll_s=settings.poll_s,
                grace_s=settings.grace_s,
                outage_s=settings.outage_s,
                isolation=settings.isolation,
            ),
            core_ids=detected.core_ids,
            env=dict(os.environ),  # one snapshot: reading os.environ per job is slow
            workdir=settings.scratch,
            keep=detected.slots,
            stopping=lambda: self._stop_reason,
            gone=lambda: self.phase is Phase.GONE,
        )

    # --- public -------------------------------------------------------------------------------

    def request_stop(self, reason: str, *, grace_s: float = 0.0) -> None:
        """Stop taking work and leave. With ``grace_s`` (a batch system's warning before its kill),
        running jobs that will end within it finish; the others are interrupted at once."""
        if self._stop_reason is None:
            self._stop_reason = reason
            if grace_s > 0:
                self._finish_by = time.time() + grace_s - self.settings.grace_s - 1.0
            log.info("stopping: %s%s", reason, f" (jobs that end within {grace_s:.0f} s finish)" if grace_s else "")
        self._poke()

    def warned(self, reason: str) -> None:
        """The batch system's warning signal: a graceful stop within ``signal_grace_s``."""
        self.request_stop(reason, grace_s=self.settings.signal_grace_s)

    @property
    def draining(self) -> bool:
        return self.phase is not Phase.WORKING

    @property
    def occupancy(self) -> float:
        return self.stats.occupancy(self.res.slots, time.time())

    async def run(self) -> int:
        """Self-test, register, work until idle, end of life or stop. Returns the exit code."""
        result = await self_test(
            self.settings.scratch,
            min_disk_mb=self.settings.min_disk_mb,
            required_commands=self.settings.required_commands,
            server_check=self.channel.check,
        )
        reg = await patiently(
            "register",
            lambda: self.channel.register(
                PilotRegister(
                    batch_id=self.res.batch_id,
                    host=socket.gethostname(),
                    end_time=self.end_time,
                    resources=Resources(
                        cpus=self.res.slots,
                        memory_mb=self.res.memory_mb,
                        gpus=len(self.res.gpu_ids),
                        disk_mb=self.res.disk_mb,
                    ),
                    selftest_ok=result.ok,
                    selftest_reason=result.reason,
                )
            ),
            outage_s=self.settings.outage_s,
        )
        if not result.ok:
            log.error("self-test failed, taking no work: %s", result.reason)
            return 1
        self.pilot_id = reg.pilot_id
        self.heartbeat_s = reg.heartbeat_s
        self.attempts.move_to(self.settings.scratch / f"pilot-{self.pilot_id}", keep=self.res.slots)
        log.info(
            "pilot %d started: %d slots on cores %s, %d MB, GPUs %s, %d MB disk, %.0f s to live",
            self.pilot_id,
            self.res.slots,
            list(self.res.core_ids),
            self.res.memory_mb,
            list(self.res.gpu_ids) or "none",
            self.res.disk_mb,
            self.end_time - time.time(),
        )
        log.info("pilot %d isolates its jobs with %s", self.pilot_id, self.settings.isolation.name)
        async with self.attempts.sandboxes:
            try:
                reason = await self._loop()
            finally:
                leftovers.end_all()
            await self._leave(reason)
        return 0

    # --- the loop -----------------------------------------------------------------------------

    async def _loop(self) -> str:
        """Turn by turn: move the phase on, send what is due, sleep until news, take in answers."""
        while self._step(time.time(), time.monotonic()) is not Phase.DONE:
            mono = time.monotonic()
            self._launch(mono)
            timeout = self.flights.wait_s(self.heartbeat_s, mono)
            if self.started or self.finished:
                timeout = min(timeout, self._report_delay())
            if self.running and self.flights.sync is None:
                timeout = min(timeout, LISTEN_GAP_S)
            await self._sleep(max(0.01, timeout))
            for flight in self.flights.landed():
                self.flights.settled(flight, self._settle(flight), time.monotonic())
        return self._stop_reason or "stopped"

    def _step(self, now: float, mono: float) -> Phase:
        """WORKING starts jobs until a stop is asked for (by a signal, the end time, idleness or a
        black hole); DRAINING and GONE last until no job runs, nothing is in flight and the
        reports are out (or cannot go out); then DONE."""
        if self.phase is Phase.WORKING:
            if self._stop_reason is None and self.end_time - now <= self.settings.end_margin_s:
                self.request_stop("reached its end time")
            if self._stop_reason is None and self._drain_file.asked(mono):
                # the jobs that can end before the pilot's own end finish; the others go back at once
                self.request_stop("asked to drain by glidein-client drain", grace_s=max(1.0, self.end_time - now))
            if self._stop_reason is None:
                self._dispatch(now)
                self._check_idle(mono)
            if self._stop_reason is not None:
                self._drain(self._stop_reason)
        if self._finish_by and now >= self._finish_by and self.phase is Phase.DRAINING:
            self._finish_by = 0.0
            self._drain(self._stop_reason or "its grace ran out")  # what still runs is interrupted now
        if self.phase is Phase.GONE:
            self.started.clear()
            self.finished.clear()
        if self.phase is not Phase.WORKING and self._drained(mono):
            self.phase = Phase.DONE
        return self.phase

    def _check_idle(self, mono: float) -> None:
        if self.running or self.backlog:
            self._idle_since = mono
        elif mono - self._idle_since >= self.settings.idle_timeout_s:
            self.request_stop(f"idle for {self.settings.idle_timeout_s:.0f} s")

    def _drained(self, mono: float) -> bool:
        if self.running or self.flights.busy:
            return False
        return self.phase is Phase.GONE or not (self.started or self.finished) or mono > self._drain_deadline

    def _launch(self, mono: float) -> None:
        """Send the sync when it is due; beside a long poll, send waiting reports on their own."""
        flights = self.flights
        if flights.may_sync(mono) and self._sync_due(mono - flights.last_sync):
            flights.sync = self._send(claims=True)
            flights.last_sync = mono
        elif (self.started or self.finished) and flights.may_report_beside(mono, self._report_delay()):
            flights.report = self._send(claims=False)  # reports never wait behind a long poll
            flights.last_report = mono

    async def _sleep(self, timeout: float) -> None:
        """Sleep until ``timeout`` passes or something calls :meth:`_poke`."""
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(timeout, self._poke)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _poke(self, *_: object) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _nudge(self) -> None:
        """Wake the main loop when a new report or a free slot may call for a sync (not for every job)."""
        pending = len(self.started) + len(self.finished)
        if pending == 1 or pending >= REPORT_BATCH or self.draining or self._claim_urgent():
            self._poke()

    def _send(self, *, claims: bool) -> Flight:
        """Send the waiting reports; with ``claims``, also heartbeat and claim (the full sync)."""
        reports = (self.started, self.finished)
        self.started, self.finished = [], []
        req = self._sync_request(reports) if claims else self._report_request(reports)
        self._reporting.update(r.attempt_id for r in reports[0])
        self._reporting.update(f.attempt_id for f in reports[1])
        task = asyncio.create_task(self.channel.sync(req))
        task.add_done_callback(self._poke)
        return Flight(task, reports, claims, req.wait_s > 0)

    def _settle(self, flight: Flight) -> bool:
        """Take in the answer of a finished sync; False when it failed and its reports wait for another."""
        started, finished = flight.reports
        self._reporting.subtract(r.attempt_id for r in started)
        self._reporting.subtract(f.attempt_id for f in finished)
        self._reporting = +self._reporting  # drop those with no report left on the way
        try:
            self._absorb(flight.task.result(), claimed=flight.claims)
            self._server_away = False
            return True
        except ConflictError as exc:
            log.error("the server refused this pilot: %s", exc)
            self.stale.update(self.running)
            self.request_stop("the server no longer knows this pilot")
            self._drain("the server no longer knows this pilot")
            self.phase = Phase.GONE
            self.started.clear()
            self.finished.clear()
            return True
        except GlideinError as exc:
            # Keep the reports and send them again later; jobs keep running meanwhile.
            self.started = started + self.started
            self.finished = finished + self.finished
            if isinstance(exc, ServerUnreachable):
                if flight.claims and not self._server_away:
                    log.warning("server unreachable, keeping %d reports and retrying: %s", len(self.finished), exc)
                self._server_away = True
            else:
                log.warning("sync refused: %s", exc)
            return False

    def _sync_due(self, since_last_s: float) -> bool:
        if since_last_s >= self.heartbeat_s or (self.running and since_last_s >= LISTEN_GAP_S):
            return True  # (with jobs running: keep listening for their cancels)
        urgent = self._claim_urgent()
        if urgent or self.draining:
            return urgent or bool(self.started or self.finished)
        # Only reports to send: gather them for a moment so one round trip carries many.
        return bool(self.started or self.finished) and (
            since_last_s >= self._report_delay() or len(self.finished) >= REPORT_BATCH
        )

    def _report_delay(self) -> float:
        """How long reports gather before they are sent: a moment while more jobs wait to start, none after."""
        return REPORT_DELAY_S if self.backlog else 0.0

    def _claim_urgent(self) -> bool:
        """Cores would stand idle, or the backlog runs low, while the server may have work."""
        return (
            not self.draining
            and not self._server_empty
            and (self._free_after_backlog()[0] > 0 or len(self.backlog) < self._want() // 2)
        )

    def _want(self) -> int:
        return self.stats.want(self.res.slots, self.settings.prefetch_s, self.settings.max_backlog)

    def _free_after_backlog(self) -> tuple[int, int, int, int]:
        b = self.backlog
        return (
            max(self.pool.free_slots - b.cpus, 0),
            max(self.mem_free - b.memory_mb, 0),
            max(self.pool.free_gpus - b.gpus, 0),
            max(self.disk_free - b.disk_mb, 0),
        )

    def _sync_request(self, reports: tuple[list[AttemptRef], list[Finish]]) -> SyncRequest:
        cpus, mem, gpus, disk = self._free_after_backlog()
        idle = not self.running and not self.backlog and not reports[0] and not reports[1]
        wait_s = 0.0
        if self.running or (not self.draining and (self._server_empty or idle)):
            # Long poll: the server answers as soon as work arrives, one of the running jobs is
            # cancelled, or a report sent beside the poll frees cores; news never waits a heartbeat.
            wait_s = self.heartbeat_s
        held = set(self.running) | {c.attempt_id for c in self.backlog}
        held.update(r.attempt_id for r in reports[0])
        held.update(f.attempt_id for f in reports[1])
        held.update(self._reporting)  # (the attempts with a report still on its way)
        # Only one claiming sync is in flight at a time, so every earlier one has come back (or been
        # given up) when this one lists what the pilot holds: the server may take what it omits as lost.
        return SyncRequest(
            seq=self._next_seq(),
            held=sorted(held),
            started=reports[0],
            finished=reports[1],
            free=Resources(cpus=cpus, memory_mb=mem, gpus=gpus, disk_mb=disk),
            lifetime_s=max(0.0, self.end_time - time.time() - self.settings.end_margin_s),
            want=max(0, self._want() - len(self.backlog)) if not self.draining else 0,
            wait_s=wait_s,
            occupancy=self.occupancy,
            draining=self.draining,
        )

    def _report_request(self, reports: tuple[list[AttemptRef], list[Finish]]) -> SyncRequest:
        cpus, mem, gpus, disk = self._free_after_backlog()
        return SyncRequest(
            seq=self._next_seq(),
            started=reports[0],
            finished=reports[1],
            free=Resources(cpus=cpus, memory_mb=mem, gpus=gpus, disk_mb=disk),
            lifetime_s=max(0.0, self.end_time - time.time() - self.settings.end_margin_s),
            occupancy=self.occupancy,
            draining=self.draining,
            claim=False,
        )

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _absorb(self, resp: SyncResponse, *, claimed: bool = True) -> None:
        if claimed and not resp.cancel:  # an answer hurried by a cancel says nothing of the queue
            self._server_empty = not resp.jobs
        if self.draining:  # claimed on the way while the pilot began to stop: back to the queue at once
            for claim in resp.jobs:
                self._report_unstarted(claim, f"the pilot is stopping: {self._stop_reason}")
        else:
            self.backlog.extend(resp.jobs)
        for attempt_id in resp.cancel:
            self._kill(attempt_id, Outcome.CANCELLED, "cancelled by its owner")
            self._drop_backlog(attempt_id, Outcome.CANCELLED, "cancelled by its owner")
        for ref in resp.refused:
            log.warning("server refused the report of attempt %d: %s", ref.attempt_id, ref.reason)
            if ref.attempt_id in self.running:
                self.stale.add(ref.attempt_id)
                self._kill(ref.attempt_id, Outcome.INTERRUPTED, "another attempt owns this job now")
        if resp.jobs:
            log.debug("claimed %d jobs", len(resp.jobs))
        if resp.leave and not (self.running or self.backlog or resp.jobs):
            self.request_stop(resp.leave)  # holds no job: nothing is interrupted

    # --- starting and stopping jobs -----------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        if not self.backlog or self.pool.free_slots <= 0:
            return
        left_s = self.end_time - now - self.settings.end_margin_s
        start, give_back = self.backlog.plan(
            self.pool.free_slots, self.pool.free_gpus, self.mem_free, self.disk_free, left_s
        )
        for claim in give_back:
            self.backlog.take(claim.attempt_id)
            self._report_unstarted(claim, "it would not finish before the pilot's end")
        for claim in start:
            self.backlog.take(claim.attempt_id)
            alloc = self.pool.allocate(claim.spec.cpus, claim.spec.gpus)
            assert alloc is not None  # the plan counted the free slots and GPUs
            self.mem_free -= claim.spec.memory_mb
            self.disk_free -= claim.spec.disk_mb
            entry = Running(claim, alloc, time.time())
            self.running[claim.attempt_id] = entry
            entry.task = asyncio.create_task(self._run_job(entry))

    def _report_unstarted(self, claim: ClaimedJob, reason: str) -> None:
        self.finished.append(
            Finish(attempt_id=claim.attempt_id, lease=claim.lease, outcome=Outcome.INTERRUPTED, reason=reason)
        )

    def _drop_backlog(self, attempt_id: int, outcome: Outcome, reason: str) -> None:
        claim = self.backlog.take(attempt_id)
        if claim is not None:
            self.finished.append(Finish(attempt_id=attempt_id, lease=claim.lease, outcome=outcome, reason=reason))

    def _kill(self, attempt_id: int, outcome: Outcome, reason: str) -> None:
        entry = self.running.get(attempt_id)
        if entry is None:
            return
        entry.kill = (outcome, reason)
        if entry.proc is not None:
            entry.proc.kill(outcome, reason)

    def _drain(self, reason: str) -> None:
        """Stop taking work: release the backlog and interrupt running jobs (not their fault)."""
        if self.phase is Phase.WORKING:
            self.phase = Phase.DRAINING
            self._drain_deadline = time.monotonic() + 2 * self.settings.grace_s + 30.0
        while self.backlog:
            self._report_unstarted(self.backlog.popleft(), f"the pilot is stopping: {reason}")
        for attempt_id, entry in list(self.running.items()):
            if entry.started_at + entry.claim.spec.walltime_s > self._finish_by:  # cannot end in time
                self._kill(attempt_id, Outcome.INTERRUPTED, f"the pilot is stopping: {reason}")

    async def _run_job(self, entry: Running) -> None:
        await self.attempts.run(entry, started=self._on_started, ended=self._release)

    def _on_started(self, entry: Running) -> None:
        self.started.append(AttemptRef(attempt_id=entry.claim.attempt_id, lease=entry.claim.lease))
        self._nudge()

    def _release(self, entry: Running, result: RunResult, outputs: list[OutputFile]) -> None:
        claim = entry.claim
        self.running.pop(claim.attempt_id, None)
        self.pool.release(entry.alloc)
        self.mem_free += claim.spec.memory_mb
        self.disk_free += claim.spec.disk_mb
        wall = time.time() - entry.started_at
        self.stats.add(claim.spec.cpus, wall)
        if claim.attempt_id in self.stale:
            self.stale.discard(claim.attempt_id)
        else:
            self.finished.append(finish_report(entry, result, outputs, self.res, self.settings.isolation.name))
        if result.outcome is not Outcome.DONE:
            log.info(
                "job %d (attempt %d) ended %s: %s", claim.job_id, claim.attempt_id, result.outcome.value, result.reason
            )
        self._watch_for_black_hole(result)
        if not self.draining and self._stop_reason is None:
            self._dispatch(time.time())  # the freed slot takes the next job at once
        self._nudge()

    def _watch_for_black_hole(self, result: RunResult) -> None:
        settings = self.settings
        why = self.stats.black_hole(
            result.outcome, result.wall_s, failures=settings.black_hole_failures, fast_s=settings.fast_failure_s
        )
        if why is not None:
            log.error("%s; taking no more work", why)
            self.request_stop(why)

    async def _leave(self, reason: str) -> None:
        log.info(
            "pilot %d leaving: %s (ran %d jobs, occupancy %.0f%%)",
            self.pilot_id,
            reason,
            self.stats.jobs,
            100 * self.occupancy,
        )
        with contextlib.suppress(GlideinError):
            await self.channel.exit(PilotExit(reason=reason, occupancy=self.occupancy, jobs_run=self.stats.jobs))
