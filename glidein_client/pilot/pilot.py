"""The pilot's main loop: claim jobs that fit, run them pinned to their cores, report, repeat.

Reports, heartbeat and claims travel together in one ``sync`` round trip, sent whenever
there is news; while it is in flight, jobs keep starting from a short local backlog. The
backlog holds work only for jobs seen to be short (about ``prefetch_s`` seconds of work per
slot), so long jobs are never held by a pilot that cannot start them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import random
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from glidein_client.pilot.backlog import Backlog
from glidein_client.pilot.channels.base import Channel
from glidein_client.pilot.executor import JobProcess, JobRun, RunResult
from glidein_client.pilot.partition import Allocation, SlotPool, cores_for
from glidein_client.pilot.resources import Detected
from glidein_client.pilot.sandboxes import Sandboxes
from glidein_client.pilot.selftest import self_test
from glidein_client.wire.errors import ConflictError, GlideinError, ServerUnreachable
from glidein_client.wire.schema import (
    LOG_TAIL_BYTES,
    AttemptRef,
    ClaimedJob,
    Finish,
    InputFile,
    Outcome,
    OutputFile,
    PilotExit,
    PilotRegister,
    Resources,
    SyncRequest,
    SyncResponse,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
REPORT_DELAY_S = 0.05
MAX_RETRY_S = 10.0  # longest wait between tries while the server is unreachable
REPORT_BATCH = 64
#: A batch system ends a pilot by signalling every process of its job (scancel, time limit): a job
#: killed by one of these while the pilot's own signal is on its way was interrupted, not at fault.
STOP_SIGNALS = frozenset({-signal.SIGTERM, -signal.SIGKILL, -signal.SIGINT, -signal.SIGHUP})
STOP_SIGNAL_GRACE_S = 1.0


@dataclass(frozen=True)
class PilotSettings:
    scratch: Path
    idle_timeout_s: float = 120.0
    prefetch_s: float = 2.0  # local backlog: about this many seconds of short work per slot
    max_backlog: int = 256
    end_margin_s: float = 5.0  # leave this long before the end time
    min_disk_mb: int = 100
    required_commands: tuple[str, ...] = ()
    poll_s: float = 1.0  # memory checks
    grace_s: float = 5.0  # SIGTERM -> SIGKILL for jobs
    black_hole_failures: int = 5  # this many jobs in a row failing fast: stop taking work
    fast_failure_s: float = 10.0
    outage_s: float = 300.0  # keep retrying transfers and registration this long while the server is away


@dataclass
class _Running:
    claim: ClaimedJob
    alloc: Allocation
    started_at: float
    proc: JobProcess | None = None
    kill: tuple[Outcome, str] | None = None
    task: asyncio.Task[None] | None = None

    def requested_kill(self) -> tuple[Outcome, str] | None:
        return self.kill


@dataclass(frozen=True)
class _Flight:
    task: asyncio.Task[SyncResponse]
    reports: tuple[list[AttemptRef], list[Finish]]
    claims: bool
    long_poll: bool


@dataclass
class _Stats:
    start: float = field(default_factory=time.time)
    core_s: float = 0.0
    jobs: int = 0
    runtime_ewma_s: float | None = None

    def add(self, cpus: int, wall_s: float) -> None:
        self.core_s += cpus * wall_s
        self.jobs += 1
        prev = self.runtime_ewma_s
        self.runtime_ewma_s = wall_s if prev is None else 0.8 * prev + 0.2 * wall_s


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
        self.running: dict[int, _Running] = {}
        self.started: list[AttemptRef] = []
        self.finished: list[Finish] = []
        self.stale: set[int] = set()
        self.stats = _Stats()
        self.heartbeat_s = 10.0
        self.pilot_id = 0
        self._waiter: asyncio.Future[None] | None = None  # the main loop's sleep; _poke ends it
        self._stop_reason: str | None = None
        self._draining = False
        self._server_empty = False
        self._server_gone = False
        self._server_away = False
        self._reporting: set[int] = set()  # attempts whose reports are on their way
        self._cache_locks: dict[str, asyncio.Lock] = {}
        self._fast_failures = 0
        self._workdir = settings.scratch
        self._env = dict(os.environ)  # one snapshot: reading os.environ per job is slow
        self._sandboxes = Sandboxes(self._workdir, keep=detected.slots)

    # --- public -------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
            log.info("stopping: %s", reason)
        self._poke()

    @property
    def occupancy(self) -> float:
        elapsed = max(time.time() - self.stats.start, 1e-6)
        return min(1.0, self.stats.core_s / (self.res.slots * elapsed))

    async def run(self) -> int:
        """Self-test, register, work until idle, end of life or stop. Returns the exit code."""
        result = await self_test(
            self.settings.scratch,
            min_disk_mb=self.settings.min_disk_mb,
            required_commands=self.settings.required_commands,
            server_check=self.channel.check,
        )
        reg = await self._patiently(
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
        )
        if not result.ok:
            log.error("self-test failed, taking no work: %s", result.reason)
            return 1
        self.pilot_id = reg.pilot_id
        self.heartbeat_s = reg.heartbeat_s
        self._workdir = self.settings.scratch / f"pilot-{self.pilot_id}"
        self._sandboxes = Sandboxes(self._workdir, keep=self.res.slots)
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
        async with self._sandboxes:
            reason = await self._loop()
            await self._leave(reason)
        return 0

    # --- the loop -----------------------------------------------------------------------------

    async def _loop(self) -> str:  # noqa: C901  (to become a small state machine)
        sync: _Flight | None = None  # the sync that claims (maybe a long poll)
        report: _Flight | None = None  # reports sent while that long poll waits for work
        last_sync = last_report = 0.0
        idle_since = time.monotonic()
        backoff_s = 0.0
        retry_at = 0.0
        drain_deadline = math.inf
        while True:
            now = time.time()
            if self._stop_reason is None and self.end_time - now <= self.settings.end_margin_s:
                self.request_stop("reached its end time")
            if self._stop_reason is not None and not self._draining:
                self._drain(self._stop_reason)
            if not self._draining:
                self._dispatch(now)
            if self.running or self.backlog:
                idle_since = time.monotonic()
            elif self._stop_reason is None and time.monotonic() - idle_since >= self.settings.idle_timeout_s:
                self.request_stop(f"idle for {self.settings.idle_timeout_s:.0f} s")
                continue
            if self._draining and not self.running and sync is None and report is None:
                if self._server_gone or not (self.started or self.finished) or time.monotonic() > drain_deadline:
                    return self._stop_reason or "stopped"
            if self._draining and drain_deadline == math.inf:
                drain_deadline = time.monotonic() + 2 * self.settings.grace_s + 30.0
            if self._server_gone:
                self.started.clear()
                self.finished.clear()

            mono = time.monotonic()
            if sync is None and mono >= retry_at and self._sync_due(mono - last_sync):
                sync = self._send(claims=True)
                last_sync = mono
            elif (
                sync is not None
                and sync.long_poll
                and report is None
                and (self.started or self.finished)
                and mono - max(last_sync, last_report) >= self._report_delay()
            ):
                report = self._send(claims=False)  # reports never wait behind a long poll
                last_report = mono

            timeout = min(self.heartbeat_s, retry_at - time.monotonic() if retry_at else self.heartbeat_s)
            if self.started or self.finished:
                timeout = min(timeout, self._report_delay())
            await self._sleep(max(0.01, timeout))

            for flight in (sync, report):
                if flight is None or not flight.task.done():
                    continue
                if flight is sync:
                    sync = None
                else:
                    report = None
                if self._settle(flight):
                    if flight.claims:
                        backoff_s, retry_at = 0.0, 0.0
                elif flight.claims:
                    backoff_s = min(MAX_RETRY_S, max(1.0, backoff_s * 2))
                    retry_at = time.monotonic() + backoff_s * random.uniform(0.75, 1.25)

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
        if pending == 1 or pending >= REPORT_BATCH or self._draining or self._claim_urgent():
            self._poke()

    def _send(self, *, claims: bool) -> _Flight:
        """Send the waiting reports; with ``claims``, also heartbeat and claim (the full sync)."""
        reports = (self.started, self.finished)
        self.started, self.finished = [], []
        req = self._sync_request(reports) if claims else self._report_request(reports)
        self._reporting.update(r.attempt_id for r in reports[0])
        self._reporting.update(f.attempt_id for f in reports[1])
        task = asyncio.create_task(self.channel.sync(req))
        task.add_done_callback(self._poke)
        return _Flight(task, reports, claims, req.wait_s > 0)

    def _settle(self, flight: _Flight) -> bool:
        """Take in the answer of a finished sync; False when it failed and its reports wait for another."""
        started, finished = flight.reports
        self._reporting.difference_update(r.attempt_id for r in started)
        self._reporting.difference_update(f.attempt_id for f in finished)
        try:
            self._absorb(flight.task.result(), claimed=flight.claims)
            self._server_away = False
            return True
        except ConflictError as exc:
            log.error("the server refused this pilot: %s", exc)
            self._server_gone = True
            self.stale.update(self.running)
            self.request_stop("the server no longer knows this pilot")
            self._drain("the server no longer knows this pilot")
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
        if since_last_s >= self.heartbeat_s:
            return True
        urgent = self._claim_urgent()
        if urgent or self._draining:
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
            not self._draining
            and not self._server_empty
            and (self._free_after_backlog()[0] > 0 or len(self.backlog) < self._want() // 2)
        )

    def _want(self) -> int:
        r = self.stats.runtime_ewma_s
        if r is None or r >= self.settings.prefetch_s:
            return 0
        return min(self.settings.max_backlog, math.ceil(self.res.slots * self.settings.prefetch_s / max(r, 1e-3)))

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
        if not self._draining and (self._server_empty or idle):
            # Long poll: the server answers as soon as work arrives. Short while jobs run, so reports flow.
            wait_s = self.heartbeat_s if not self.running else min(1.0, self.heartbeat_s)
        held = set(self.running) | {c.attempt_id for c in self.backlog}
        held.update(r.attempt_id for r in reports[0])
        held.update(f.attempt_id for f in reports[1])
        held.update(self._reporting)
        return SyncRequest(
            held=sorted(held),
            started=reports[0],
            finished=reports[1],
            free=Resources(cpus=cpus, memory_mb=mem, gpus=gpus, disk_mb=disk),
            lifetime_s=max(0.0, self.end_time - time.time() - self.settings.end_margin_s),
            want=max(0, self._want() - len(self.backlog)) if not self._draining else 0,
            wait_s=wait_s,
            occupancy=self.occupancy,
            draining=self._draining,
        )

    def _report_request(self, reports: tuple[list[AttemptRef], list[Finish]]) -> SyncRequest:
        cpus, mem, gpus, disk = self._free_after_backlog()
        return SyncRequest(
            started=reports[0],
            finished=reports[1],
            free=Resources(cpus=cpus, memory_mb=mem, gpus=gpus, disk_mb=disk),
            lifetime_s=max(0.0, self.end_time - time.time() - self.settings.end_margin_s),
            occupancy=self.occupancy,
            draining=self._draining,
            claim=False,
        )

    def _absorb(self, resp: SyncResponse, *, claimed: bool = True) -> None:
        if claimed:
            self._server_empty = not resp.jobs
        if self._draining:  # claimed on the way while the pilot began to stop: back to the queue at once
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

    # --- starting and stopping jobs -----------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        left = self.end_time - now - self.settings.end_margin_s
        kept: list[ClaimedJob] = []
        while self.backlog and self.pool.free_slots > 0:
            claim = self.backlog.popleft()
            spec = claim.spec
            if spec.walltime_s > left:
                self._report_unstarted(claim, "it would not finish before the pilot's end")
                continue
            if spec.memory_mb > self.mem_free or spec.disk_mb > self.disk_free:
                kept.append(claim)
                continue
            alloc = self.pool.allocate(spec.cpus, spec.gpus)
            if alloc is None:
                kept.append(claim)
                continue
            self.mem_free -= spec.memory_mb
            self.disk_free -= spec.disk_mb
            entry = _Running(claim, alloc, time.time())
            self.running[claim.attempt_id] = entry
            entry.task = asyncio.create_task(self._run_job(entry))
        self.backlog.putback(kept)

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
        self._draining = True
        while self.backlog:
            self._report_unstarted(self.backlog.popleft(), f"the pilot is stopping: {reason}")
        for attempt_id in list(self.running):
            self._kill(attempt_id, Outcome.INTERRUPTED, f"the pilot is stopping: {reason}")

    async def _run_job(self, entry: _Running) -> None:
        claim, spec = entry.claim, entry.claim.spec
        sandbox: Path | None = None
        result: RunResult | None = None
        outputs: list[OutputFile] = []
        try:
            sandbox = self._sandboxes.make(f"job-{claim.job_id}-{claim.attempt_id}")
            for inp in spec.inputs:
                await self._place_input(inp, sandbox)
            if entry.kill is None:
                proc = JobProcess(
                    JobRun(
                        attempt_id=claim.attempt_id,
                        job_id=claim.job_id,
                        spec=spec,
                        sandbox=sandbox,
                        cores=cores_for(entry.alloc.slots, self.res.core_ids),
                        gpus=entry.alloc.gpus,
                    ),
                    poll_s=self.settings.poll_s,
                    grace_s=self.settings.grace_s,
                    base_env=self._env,
                )
                entry.proc = proc
                await proc.start()
                kill = entry.requested_kill()  # may have been set while starting
                if kill is not None:
                    proc.kill(*kill)
                self.started.append(AttemptRef(attempt_id=claim.attempt_id, lease=claim.lease))
                self._nudge()
                result = await proc.wait()
                if result.outcome is Outcome.FAILED and result.exit_code in STOP_SIGNALS:
                    await asyncio.sleep(STOP_SIGNAL_GRACE_S)  # let the pilot's own signal arrive
                    if self._stop_reason is not None:
                        result = _replace(
                            result, Outcome.INTERRUPTED, f"the pilot is stopping: {self._stop_reason} ({result.reason})"
                        )
                if result.outcome is Outcome.DONE:
                    outputs, result = await self._upload_outputs(claim, sandbox, result)
        except GlideinError as exc:
            outcome = Outcome.INTERRUPTED if isinstance(exc, ServerUnreachable) else Outcome.FAILED
            result = RunResult(
                outcome=outcome,
                exit_code=None,
                reason=f"staging failed: {exc}",
                wall_s=0.0,
                max_rss_mb=0.0,
                stdout_tail="",
                stderr_tail="",
            )
        except OSError as exc:
            result = RunResult(
                outcome=Outcome.INTERRUPTED,
                exit_code=None,
                reason=f"the pilot's scratch failed: {exc}",
                wall_s=0.0,
                max_rss_mb=0.0,
                stdout_tail="",
                stderr_tail="",
            )
        finally:
            if result is None:
                outcome, reason = entry.kill or (Outcome.INTERRUPTED, "the pilot stopped before the job began")
                result = RunResult(
                    outcome=outcome,
                    exit_code=None,
                    reason=reason,
                    wall_s=0.0,
                    max_rss_mb=0.0,
                    stdout_tail="",
                    stderr_tail="",
                )
            if sandbox is not None:
                self._sandboxes.release(sandbox, reuse=entry.proc is not None and entry.proc.pid is not None)
            self._release(entry, result, outputs)

    def _release(self, entry: _Running, result: RunResult, outputs: list[OutputFile]) -> None:
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
            self.finished.append(
                Finish(
                    attempt_id=claim.attempt_id,
                    lease=claim.lease,
                    outcome=result.outcome,
                    exit_code=result.exit_code,
                    reason=result.reason,
                    wall_s=result.wall_s,
                    max_rss_mb=result.max_rss_mb,
                    stdout_tail=result.stdout_tail[-LOG_TAIL_BYTES:],
                    stderr_tail=result.stderr_tail[-LOG_TAIL_BYTES:],
                    outputs=outputs,
                )
            )
        if result.outcome is not Outcome.DONE:
            log.info(
                "job %d (attempt %d) ended %s: %s", claim.job_id, claim.attempt_id, result.outcome.value, result.reason
            )
        self._watch_for_black_hole(result)
        if not self._draining and self._stop_reason is None:
            self._dispatch(time.time())  # the freed slot takes the next job at once
        self._nudge()

    def _watch_for_black_hole(self, result: RunResult) -> None:
        """Stop taking work when job after job fails within seconds: the node, not the jobs, is likely broken."""
        if result.outcome is Outcome.DONE:
            self._fast_failures = 0
        elif result.outcome is Outcome.FAILED and result.wall_s < self.settings.fast_failure_s:
            self._fast_failures += 1
            if self._fast_failures >= self.settings.black_hole_failures:
                log.error(
                    "black hole: the last %d jobs all failed within %.0f s; taking no more work",
                    self._fast_failures,
                    self.settings.fast_failure_s,
                )
                self.request_stop(
                    f"black hole: the last {self._fast_failures} jobs all failed within "
                    f"{self.settings.fast_failure_s:.0f} s of starting; check this node"
                )

    async def _place_input(self, inp: InputFile, sandbox: Path) -> None:
        dest = sandbox / inp.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if inp.sha256 is None:
            await self._patiently(f"download {inp.name}", lambda: self.channel.fetch_input(inp, dest))
            return
        cached = self._workdir / "cache" / inp.sha256
        lock = self._cache_locks.setdefault(inp.sha256, asyncio.Lock())
        async with lock:
            if not cached.exists():
                cached.parent.mkdir(exist_ok=True)
                await self._patiently(f"download {inp.name}", lambda: self.channel.fetch_input(inp, cached))
        try:
            os.link(cached, dest)
        except OSError:
            await asyncio.to_thread(shutil.copyfile, cached, dest)

    async def _upload_outputs(
        self, claim: ClaimedJob, sandbox: Path, result: RunResult
    ) -> tuple[list[OutputFile], RunResult]:
        missing = [name for name in claim.spec.outputs if not (sandbox / name).is_file()]
        if missing:
            return [], _replace(result, Outcome.FAILED, f"the job did not produce {', '.join(missing)}")
        uploaded = []
        for name in claim.spec.outputs:
            upload = functools.partial(self.channel.upload_output, claim.attempt_id, claim.lease, name, sandbox / name)
            uploaded.append(await self._patiently(f"upload {name}", upload))
        return uploaded, result

    async def _patiently(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry ``call`` while the server is unreachable (1 s doubling to 10 s), up to ``outage_s``."""
        deadline = time.monotonic() + self.settings.outage_s
        delay = 1.0
        while True:
            try:
                return await call()
            except ServerUnreachable as exc:
                if time.monotonic() + delay > deadline or self._server_gone:
                    raise
                log.warning("%s: server unreachable (%s); retrying in %.0f s", what, exc.message, delay)
                await asyncio.sleep(delay * random.uniform(0.75, 1.25))  # jitter: pilots do not return in step
                delay = min(MAX_RETRY_S, delay * 2)

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


def _replace(result: RunResult, outcome: Outcome, reason: str) -> RunResult:
    return RunResult(
        outcome=outcome,
        exit_code=result.exit_code,
        reason=reason,
        wall_s=result.wall_s,
        max_rss_mb=result.max_rss_mb,
        stdout_tail=result.stdout_tail,
        stderr_tail=result.stderr_tail,
    )
