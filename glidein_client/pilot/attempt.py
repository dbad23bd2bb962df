"""One attempt of one claimed job, from its inputs to its outputs.

:class:`Attempts` makes the job's sandbox, places its inputs (checked copies from the
pilot's cache when they name a sha256), runs the job through :class:`.executor.JobProcess`
in the site's isolation, uploads its outputs (regular files only, never through a symbolic
link; after a failure, whichever of them the job left) and hands the result back to the pilot,
whatever happened on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from glidein_client.pilot import provenance
from glidein_client.pilot.channels.base import Channel
from glidein_client.pilot.executor import JobProcess, RunResult
from glidein_client.pilot.inputs import InputCache
from glidein_client.pilot.isolation import Isolation
from glidein_client.pilot.launch import JobRun
from glidein_client.pilot.outputs import OutputRefused, opened_output
from glidein_client.pilot.partition import Allocation, cores_for
from glidein_client.pilot.resources import Detected
from glidein_client.pilot.sandboxes import Sandboxes
from glidein_client.wire.errors import GlideinError, InputUnavailable, ServerUnreachable
from glidein_client.wire.schema import LOG_TAIL_BYTES, ClaimedJob, FileDigest, Finish, InputFile, Outcome, OutputFile

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_RETRY_S = 10.0  # longest wait between tries while the server is unreachable
#: A batch system ends a pilot by signalling every process of its job (scancel, time limit): a job
#: killed by one of these while the pilot's own signal is on its way was interrupted, not at fault.
STOP_SIGNALS = frozenset({-signal.SIGTERM, -signal.SIGKILL, -signal.SIGINT, -signal.SIGHUP})
STOP_SIGNAL_GRACE_S = 1.0
#: Outcomes after which the outputs a job left are still brought back (HTCondor transfers them on exit).
BRING_BACK_ON_FAILURE = frozenset({Outcome.FAILED, Outcome.MEMORY, Outcome.WALLTIME})


@dataclass
class Running:
    """A claimed job the pilot has given slots to, from placing its inputs until it is reported."""

    claim: ClaimedJob
    alloc: Allocation
    started_at: float
    proc: JobProcess | None = None
    kill: tuple[Outcome, str] | None = None
    task: asyncio.Task[None] | None = None
    inputs: list[FileDigest] = field(default_factory=list)  # their sha256, for the attempt's provenance


@dataclass(frozen=True)
class AttemptSettings:
    poll_s: float  # memory checks
    grace_s: float  # SIGTERM -> SIGKILL
    outage_s: float  # keep retrying transfers this long while the server is away
    isolation: Isolation


def unrun(outcome: Outcome, reason: str) -> RunResult:
    """The result of an attempt whose job never ran."""
    return RunResult(
        outcome=outcome, exit_code=None, reason=reason, wall_s=0.0, max_rss_mb=0.0, stdout_tail="", stderr_tail=""
    )


async def patiently(
    what: str, call: Callable[[], Awaitable[T]], *, outage_s: float, gone: Callable[[], bool] = lambda: False
) -> T:
    """Retry ``call`` while the server is unreachable (1 s doubling to 10 s), up to ``outage_s``."""
    deadline = time.monotonic() + outage_s
    delay = 1.0
    while True:
        try:
            return await call()
        except ServerUnreachable as exc:
            if time.monotonic() + delay > deadline or gone():
                raise
            log.warning("%s: server unreachable (%s); retrying in %.0f s", what, exc.message, delay)
            await asyncio.sleep(delay * random.uniform(0.75, 1.25))  # jitter: pilots do not return in step
            delay = min(MAX_RETRY_S, delay * 2)


class Attempts:
    """Runs the attempts of one pilot; ``workdir`` and ``sandboxes`` are set once it has registered."""

    def __init__(
        self,
        channel: Channel,
        settings: AttemptSettings,
        *,
        core_ids: tuple[int, ...],
        env: Mapping[str, str],
        workdir: Path,
        keep: int,
        stopping: Callable[[], str | None],
        gone: Callable[[], bool],
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.core_ids = core_ids
        self.env = env
        self.workdir = workdir
        self.sandboxes = Sandboxes(workdir, keep=keep)
        self._stopping = stopping
        self._gone = gone
        self.cache = InputCache(workdir / "cache")

    def move_to(self, workdir: Path, *, keep: int) -> None:
        """Work under ``workdir`` from now on (the pilot's own directory, once it knows its id)."""
        self.workdir = workdir
        self.sandboxes = Sandboxes(workdir, keep=keep)
        self.cache = InputCache(workdir / "cache")

    async def run(
        self,
        entry: Running,
        *,
        started: Callable[[Running], None],
        ended: Callable[[Running, RunResult, list[OutputFile]], None],
    ) -> None:
        """Run ``entry``'s job; ``started`` once its process runs, ``ended`` always, last."""
        sandbox: Path | None = None
        result: RunResult | None = None
        outputs: list[OutputFile] = []
        try:
            sandbox = self.sandboxes.make(f"job-{entry.claim.job_id}-{entry.claim.attempt_id}")
            for inp in entry.claim.spec.inputs:
                await self._place_input(inp, sandbox)
            entry.inputs = await provenance.input_digests(entry.claim.spec.inputs, sandbox)
            if entry.kill is None:
                result, outputs = await self._execute(entry, sandbox, started)
        except GlideinError as exc:
            outcome = Outcome.INTERRUPTED if isinstance(exc, ServerUnreachable) else Outcome.FAILED
            result = unrun(outcome, f"staging failed: {exc}")
        except OSError as exc:
            result = unrun(Outcome.INTERRUPTED, f"the pilot's scratch failed: {exc}")
        finally:
            if result is None:
                result = unrun(*(entry.kill or (Outcome.INTERRUPTED, "the pilot stopped before the job began")))
            if sandbox is not None:
                self.sandboxes.release(sandbox, reuse=entry.proc is not None and entry.proc.pid is not None)
            ended(entry, result, outputs)

    async def _execute(
        self, entry: Running, sandbox: Path, started: Callable[[Running], None]
    ) -> tuple[RunResult, list[OutputFile]]:
        claim = entry.claim
        proc = JobProcess(
            JobRun(
                attempt_id=claim.attempt_id,
                job_id=claim.job_id,
                spec=claim.spec,
                sandbox=sandbox,
                cores=cores_for(entry.alloc.slots, self.core_ids),
                gpus=entry.alloc.gpus,
            ),
            poll_s=self.settings.poll_s,
            grace_s=self.settings.grace_s,
            base_env=self.env,
            isolation=self.settings.isolation,
        )
        entry.proc = proc
        await proc.start()
        if entry.kill is not None:  # may have been set while starting
            proc.kill(*entry.kill)
        started(entry)
        result = await proc.wait()
        if result.outcome is Outcome.FAILED and result.exit_code in STOP_SIGNALS:
            await asyncio.sleep(STOP_SIGNAL_GRACE_S)  # let the pilot's own signal arrive
            stopping = self._stopping()
            if stopping is not None:
                reason = f"the pilot is stopping: {stopping} ({result.reason})"
                result = replace(result, outcome=Outcome.INTERRUPTED, reason=reason)
        if result.outcome is Outcome.DONE:
            return await self._upload_outputs(claim, sandbox, result)
        if result.outcome in BRING_BACK_ON_FAILURE and claim.spec.outputs:
            return result, await self._upload_existing(claim, sandbox)
        return result, []

    async def _patiently(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await patiently(what, call, outage_s=self.settings.outage_s, gone=self._gone)

    async def _place_input(self, inp: InputFile, sandbox: Path) -> None:
        dest = sandbox / inp.name
        dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if inp.sha256 is None:
            try:
                await self._patiently(f"download {inp.name}", lambda: self.channel.fetch_input(inp, dest))
            except InputUnavailable as exc:
                raise InputUnavailable(f"input {inp.name}: {exc.message}") from None
            return

        async def fetch(inp: InputFile, into: Path) -> None:
            await self._patiently(f"download {inp.name}", lambda: self.channel.fetch_input(inp, into))

        await self.cache.place(inp, dest, fetch)

    async def _upload_outputs(
        self, claim: ClaimedJob, sandbox: Path, result: RunResult
    ) -> tuple[RunResult, list[OutputFile]]:
        uploaded = []
        try:
            with contextlib.ExitStack() as opened:
                paths = [opened.enter_context(opened_output(sandbox, name)) for name in claim.spec.outputs]
                for name, path in zip(claim.spec.outputs, paths, strict=True):
                    upload = functools.partial(self.channel.upload_output, claim.attempt_id, claim.lease, name, path)
                    uploaded.append(await self._patiently(f"upload {name}", upload))
        except OutputRefused as exc:  # refused before any upload: the job failed; bring back what it left
            return replace(result, outcome=Outcome.FAILED, reason=str(exc)), await self._upload_existing(claim, sandbox)
        return result, uploaded

    async def _upload_existing(self, claim: ClaimedJob, sandbox: Path) -> list[OutputFile]:
        """After a failure, as HTCondor does: upload whichever declared outputs the job left (regular
        files only); one missing, refused or not accepted is skipped, and the failure stays the job's."""
        uploaded = []
        for name in claim.spec.outputs:
            try:
                with opened_output(sandbox, name) as path:
                    upload = functools.partial(self.channel.upload_output, claim.attempt_id, claim.lease, name, path)
                    uploaded.append(await self._patiently(f"upload {name}", upload))
            except OutputRefused as exc:
                log.info("job %d failed; not uploading %s: %s", claim.job_id, name, exc)
            except GlideinError as exc:
                log.warning("job %d failed; its output %s was not uploaded: %s", claim.job_id, name, exc)
        return uploaded


def finish_report(
    entry: Running, result: RunResult, outputs: list[OutputFile], res: Detected, isolation: str
) -> Finish:
    """What the pilot reports of an ended attempt, with where and how it ran."""
    cores = entry.proc.run.cores if entry.proc else ()
    return Finish(
        attempt_id=entry.claim.attempt_id,
        lease=entry.claim.lease,
        outcome=result.outcome,
        exit_code=result.exit_code,
        reason=result.reason,
        wall_s=result.wall_s,
        max_rss_mb=result.max_rss_mb,
        stdout_tail=result.stdout_tail[-LOG_TAIL_BYTES:],
        stderr_tail=result.stderr_tail[-LOG_TAIL_BYTES:],
        outputs=outputs,
        provenance=provenance.record(res, cores, entry.alloc.gpus, entry.inputs, result, isolation=isolation),
    )
