"""Out-of-job staging: the site client copies jobs' inputs into the site's staging area before they can be claimed.

One :meth:`Stager.run_pass`:

1. reads the server's staging view of the site: the jobs staged there (with their state now)
   and the next idle jobs eligible there, with their inputs;
2. releases jobs that finished or run elsewhere, and checks the inputs of the others (a
   marker vouches for an unchanged file; a changed file is read again). An idle job whose
   input is missing or damaged is released until its input is staged again;
3. stages new jobs in claim order, as long as the site's quota (``staging.max_jobs`` jobs and
   ``staging.quota`` bytes in the area) allows: inputs are downloaded from the server (or
   their URLs), ``staging.concurrency`` at a time, verified against their sha256, flushed to
   disk and marked; a job is reported staged as soon as all its inputs are;
Before step 3 it removes the inputs that no staged or eligible job needs any more.

Inputs already verified in the area are never downloaded again, also after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

import aiohttp

from glidein_client.sharedfs.staging_area import CHUNK, StagingArea, input_key
from glidein_client.site.config import SiteConfig
from glidein_client.wire.api import RATE_LIMIT_RETRIES, ApiClient, _error_from, _retry_after_s
from glidein_client.wire.errors import GlideinError, RateLimited, ServerUnreachable, ValidationError
from glidein_client.wire.schema import InputFile, JobState
from glidein_client.wire.staging import StagingJob

log = logging.getLogger(__name__)
REPORT_EVERY_S = 0.25
GC_AGE_S = 3600.0  # partial downloads older than this go (a client killed mid-transfer)
OUTPUT_KEEP_S = 86400.0  # outputs no pilot asked to upload within a day go
ACTIVE = (JobState.CLAIMED, JobState.RUNNING)
MARKER_BYTES = 4096  # what a file's marker takes on disk, counted against the quota


@dataclass
class PassReport:
    staged: int = 0  # jobs reported staged in this pass
    released: int = 0  # jobs released (finished, run elsewhere, or an input damaged)
    downloaded: int = 0  # files downloaded
    bytes: int = 0  # bytes downloaded
    reused: int = 0  # files found verified in the area, not downloaded again
    damaged: int = 0  # staged files found missing or damaged, staged again
    failed: int = 0  # files that could not be staged this pass
    waiting: int = 0  # eligible jobs left for a later pass (quota, or more than one batch)
    ready: int = 0  # staged jobs idle now, claimable at the site
    ready_cpus: int = 0
    seconds: float = 0.0

    @property
    def more(self) -> bool:
        """Another pass right away would stage more."""
        return self.waiting > 0 and self.staged > 0


class Stager:
    """Stages the inputs of one site's jobs. Use as ``async with Stager(site, api)``; one pass at a time."""

    def __init__(self, site: SiteConfig, api: ApiClient, area: StagingArea | None = None) -> None:
        if site.staging is None:
            raise ValueError(f"site {site.name} has no [staging] section")
        self.site = site
        self.conf = site.staging
        self.quota_bytes = site.staging_quota_mb << 20
        self.api = api
        self.area = area or StagingArea(site.staging.dir)
        self.last: PassReport | None = None
        #: Cores of the staged jobs that are idle (claimable at the site), kept current during a pass.
        self.ready_cpus = 0
        self._lock = asyncio.Lock()
        self._plain: aiohttp.ClientSession | None = None  # for inputs given by URL: never sends the site's token
        self._too_big: set[int] = set()

    async def __aenter__(self) -> Stager:
        self._plain = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120))
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._plain is not None:
            await self._plain.close()
            self._plain = None

    async def run_pass(self) -> PassReport:
        async with self._lock:
            t0 = time.monotonic()
            report = PassReport()
            await asyncio.to_thread(self.area.create)
            view = await self.api.staging_view(self.site.name, limit=self.conf.batch)
            held, restage, running = await self._check_staged(view.staged, report)
            self.ready_cpus = sum(j.cpus for j in held if j.state is JobState.IDLE)
            keep = {input_key(i) for j in (*held, *restage, *view.eligible) for i in j.inputs}
            await asyncio.to_thread(self._collect, keep, time.time())  # before planning: frees the quota
            planned = await self._plan(held, restage + view.eligible, report)
            staged_ids = await self._stage(planned, running, report)
            ready = [j for j in held if j.state is JobState.IDLE] + [j for j in planned if j.job_id in staged_ids]
            report.ready = len(ready)
            report.ready_cpus = sum(j.cpus for j in ready)
            report.seconds = time.monotonic() - t0
            self.last = report
            if report.staged or report.released or report.damaged or report.failed:
                log.info(
                    "site %s: staging: %d jobs staged (%d files, %.1f MB downloaded, %d reused), %d released, "
                    "%d damaged files staged again, %d failed, %d waiting, in %.2f s",
                    self.site.name,
                    report.staged,
                    report.downloaded,
                    report.bytes / 1e6,
                    report.reused,
                    report.released,
                    report.damaged,
                    report.failed,
                    report.waiting,
                    report.seconds,
                )
            return report

    # --- 1-2: what is staged ---------------------------------------------------------------------

    async def _check_staged(
        self, staged: list[StagingJob], report: PassReport
    ) -> tuple[list[StagingJob], list[StagingJob], list[StagingJob]]:
        """Jobs kept staged; idle jobs released because an input must be staged again; running ones in that case."""
        name = self.site.name
        release = [j.job_id for j in staged if not (j.state is JobState.IDLE or (j.state in ACTIVE and j.site == name))]
        keep = [j for j in staged if j.job_id not in set(release)]
        inputs = {input_key(i): i for j in keep for i in j.inputs}
        bad = await asyncio.to_thread(self._damaged, inputs)
        report.damaged = len(bad)
        restage = [j for j in keep if j.state is JobState.IDLE and any(input_key(i) in bad for i in j.inputs)]
        release += [j.job_id for j in restage]
        if release:
            result = await self.api.report_staging(name, released=release)
            report.released = result.released
        held = [j for j in keep if j not in restage]
        # Inputs of claimed and running jobs are staged again as well: their pilots wait for them.
        running = [j for j in held if j.state in ACTIVE and any(input_key(i) in bad for i in j.inputs)]
        return held, restage, running

    def _damaged(self, inputs: dict[str, InputFile]) -> set[str]:
        bad = set()
        for key, inp in inputs.items():
            mark = self.area.vouched(key)
            if mark is not None and (inp.sha256 is None or mark.sha256 == inp.sha256):
                continue
            if not self.area.verify(key, inp.sha256):
                log.warning("site %s: staged input %s is missing or damaged; staging it again", self.site.name, key)
                bad.add(key)
        return bad

    # --- 3: what to stage --------------------------------------------------------------------------

    async def _plan(self, held: list[StagingJob], candidates: list[StagingJob], report: PassReport) -> list[StagingJob]:
        """Candidates in order, as many as the quota allows."""
        used = (await asyncio.to_thread(self.area.usage)).bytes
        present = await asyncio.to_thread(self.area.input_keys)
        room = self.conf.max_jobs - sum(1 for j in held if j.state is JobState.IDLE or j.state in ACTIVE)
        planned: list[StagingJob] = []
        planned_ids = {j.job_id for j in held}
        keys: set[str] = set()
        need_total = 0
        for i, job in enumerate(candidates):
            if job.job_id in planned_ids:
                continue
            new = {input_key(inp): inp for inp in job.inputs if input_key(inp) not in present | keys}
            need = sum((inp.size or 0) + MARKER_BYTES for inp in new.values())
            if need > self.quota_bytes:
                if job.job_id not in self._too_big:
                    self._too_big.add(job.job_id)
                    log.warning(
                        "site %s: job %d needs %.0f MB of inputs, more than the whole staging quota "
                        "(%.0f MB); it cannot run at this site",
                        self.site.name,
                        job.job_id,
                        need / 2**20,
                        self.quota_bytes / 2**20,
                    )
                continue
            if len(planned) >= room or used + need_total + need > self.quota_bytes:
                report.waiting = len(candidates) - i
                break
            planned.append(job)
            planned_ids.add(job.job_id)
            keys |= set(new)
            need_total += need
        if not report.waiting and len(candidates) >= self.conf.batch:
            report.waiting = 1  # the view was cut at one batch: there may be more
        return planned

    async def _stage(self, planned: list[StagingJob], running: list[StagingJob], report: PassReport) -> set[int]:
        """Stage the inputs of ``planned`` and ``running``; report planned jobs staged as they complete."""
        slots = asyncio.Semaphore(self.conf.concurrency)
        files: dict[str, asyncio.Task[bool]] = {}
        pending: list[StagingJob] = []
        staged: set[int] = set()

        def file(inp: InputFile) -> asyncio.Task[bool]:
            key = input_key(inp)
            if key not in files:
                files[key] = asyncio.create_task(self._stage_file(key, inp, slots, report))
            return files[key]

        async def job(j: StagingJob, report_it: bool = True) -> None:
            oks = await asyncio.gather(*(file(i) for i in j.inputs))
            if all(oks) and report_it:
                pending.append(j)

        async def flush() -> None:
            if pending:
                batch = [j.job_id for j in pending]
                self.ready_cpus += sum(j.cpus for j in pending)  # before the server wakes the cycle for them
                del pending[:]
                result = await self.api.report_staging(self.site.name, staged=batch)
                report.staged += result.staged
                staged.update(batch)

        tasks = [asyncio.create_task(job(j)) for j in planned]
        tasks += [asyncio.create_task(job(j, report_it=False)) for j in running]
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, timeout=REPORT_EVERY_S)
                tasks = [t for t in tasks if t not in done]
                for t in done:
                    t.result()
                await flush()
        finally:
            for t in tasks:
                t.cancel()
            for f in files.values():
                f.cancel()
        return staged

    async def _stage_file(self, key: str, inp: InputFile, slots: asyncio.Semaphore, report: PassReport) -> bool:
        async with slots:
            if await asyncio.to_thread(self._present, key, inp.sha256):
                report.reused += 1
                return True
            try:
                for attempt in range(RATE_LIMIT_RETRIES + 1):
                    try:
                        report.bytes += await self._download(key, inp)
                        break
                    except RateLimited as exc:  # the server asks to slow down: wait as long as it says
                        if attempt == RATE_LIMIT_RETRIES:
                            raise
                        await asyncio.sleep(exc.fields.get("retry_after_s", 1.0))
                report.downloaded += 1
                return True
            except GlideinError as exc:
                report.failed += 1
                log.warning("site %s: cannot stage input %s: %s", self.site.name, inp.name, exc)
                return False

    def _present(self, key: str, sha256: str | None) -> bool:
        mark = self.area.vouched(key)
        if mark is not None and (sha256 is None or mark.sha256 == sha256):
            return True
        return self.area.input_path(key).exists() and self.area.verify(key, sha256)

    async def _download(self, key: str, inp: InputFile) -> int:
        if inp.sha256 is not None:
            url, session = self.api.site_file_url(self.site.name, inp.sha256), self.api.session
        else:
            url, session = inp.url or "", self._plain_session
        tmp = self.area.partial_path(key)
        digest = hashlib.sha256()
        size = 0
        try:
            async with session.get(url) as resp:
                if resp.status == 429:
                    raise RateLimited(
                        "The server throttles this site's downloads.",
                        retry_after_s=_retry_after_s(resp.headers.get("Retry-After")),
                    )
                if resp.status >= 400:
                    raise _error_from(resp.status, await resp.read(), url)
                fh = await asyncio.to_thread(open, tmp, "wb")
                try:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        size += len(chunk)
                        await asyncio.to_thread(_write, fh, digest, chunk)
                    await asyncio.to_thread(_sync, fh)
                finally:
                    await asyncio.to_thread(fh.close)
            if inp.sha256 is not None and digest.hexdigest() != inp.sha256:
                raise ValidationError(
                    f"The download of {inp.name} does not match its sha256 checksum.",
                    hint="The transfer or the stored copy is corrupt; the next pass tries again.",
                )
            await asyncio.to_thread(os.replace, tmp, self.area.input_path(key))
            await asyncio.to_thread(self.area.mark, key, digest.hexdigest(), size)
            return size
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise ServerUnreachable(f"The download of {inp.name} from {url} failed: {exc}.") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    @property
    def _plain_session(self) -> aiohttp.ClientSession:
        if self._plain is None:
            raise RuntimeError("Stager used outside 'async with'")
        return self._plain

    # --- 4: clean up -------------------------------------------------------------------------------

    def _collect(self, keep: set[str], now: float) -> None:
        for key in self.area.input_keys() - keep:
            self.area.discard(key)
        for path in self.area.stale_partials(now - GC_AGE_S):
            path.unlink(missing_ok=True)
        for path, mtime in list(self.area.output_dirs()):
            if mtime < now - OUTPUT_KEEP_S:
                self.area.drop_output_dir(path)


def _write(fh: BinaryIO, digest: hashlib._Hash, chunk: bytes) -> None:
    digest.update(chunk)
    fh.write(chunk)


def _sync(fh: BinaryIO) -> None:
    fh.flush()
    os.fsync(fh.fileno())
