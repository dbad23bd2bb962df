"""What every ``glidein`` subcommand shares: the connection, output helpers and job look-ups."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from glidein_client.user import config as user_config
from glidein_client.user import lastsubmit, render
from glidein_client.user.config import UserConfig
from glidein_client.user.tasks import bounded
from glidein_client.wire.api import ApiClient
from glidein_client.wire.codec import encode
from glidein_client.wire.errors import AuthError, ForbiddenError, GlideinError, NotFoundError, ServerUnreachable
from glidein_client.wire.schema import JobList, JobState, JobView

T = TypeVar("T")
log = logging.getLogger(__name__)

IDS_PER_REQUEST = 500
PAGE_SIZE = 1000  # jobs per page of a listing
#: How long ``status``, ``wait`` and ``fetch`` keep trying a server that is not answering (a restart).
RIDE_OUT_S = 120.0
MAX_RETRY_S = 10.0
CONCURRENCY = 8
ACTIVE_STATES = (JobState.IDLE, JobState.CLAIMED, JobState.RUNNING, JobState.HELD)  # what condor_q lists
EXIT_OK, EXIT_ERROR, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 3, 130  # argparse exits 2 on usage errors


@contextlib.asynccontextmanager
async def connect(args: argparse.Namespace, cfg: UserConfig | None = None) -> AsyncIterator[ApiClient]:
    cfg = cfg or load_config(args)
    async with ApiClient(cfg.url, cfg.token, ca_file=cfg.ca_file) as api:
        try:
            yield api
        except AuthError as exc:
            if isinstance(exc, ForbiddenError):
                raise
            hint = exc.hint or "Check it, or ask your operator for a new one."
            raise AuthError(exc.message, hint=f"{hint} The token came from {cfg.token_source}.", **exc.fields) from None


def load_config(args: argparse.Namespace) -> UserConfig:
    return user_config.load(url=args.url, token_file=args.token_file, ca_file=getattr(args, "ca_file", None))


def emit_json(obj: Any) -> None:
    sys.stdout.write(encode(obj).decode() + "\n")


def about(what: str, message: str) -> str:
    """``job 5`` + ``Job 5 does not exist.`` -> ``Job 5 does not exist.``, not ``job 5: Job 5 ...``."""
    return message if message.lower().startswith(f"{what.lower()} ") else f"{what}: {message}"


def stop_if_refused(exc: GlideinError) -> None:
    """Errors about one job are reported and the others still done; a refused token stops all."""
    if isinstance(exc, AuthError) and not isinstance(exc, ForbiddenError):
        raise exc


async def jobs_by_ids(
    api: ApiClient, ids: Sequence[int], *, state: str | None = None, label: str | Sequence[str] | None = None
) -> JobList:
    """The jobs among ``ids`` (in id order); ``counts`` covers them all, whatever ``state`` is."""
    chunks = [list(ids[i : i + IDS_PER_REQUEST]) for i in range(0, len(ids), IDS_PER_REQUEST)]

    async def one(chunk: list[int]) -> JobList:
        return await api.list_jobs(ids=chunk, state=state, label=label, limit=len(chunk))

    pages = await bounded(4, one, chunks)
    counts: dict[str, int] = {}
    for page in pages:
        for key, n in page.counts.items():
            counts[key] = counts.get(key, 0) + n
    jobs = sorted((job for page in pages for job in page.jobs), key=lambda j: j.id)
    return JobList(jobs=jobs, counts=counts or render.count_states(jobs))


async def counts_of_ids(api: ApiClient, ids: Sequence[int]) -> dict[str, int]:
    """The count per state of the jobs among ``ids``, without the jobs themselves."""
    chunks = [list(ids[i : i + IDS_PER_REQUEST]) for i in range(0, len(ids), IDS_PER_REQUEST)]
    counts: dict[str, int] = {}
    for page in await bounded(4, lambda chunk: api.list_jobs(ids=chunk, limit=0), chunks):
        for key, n in page.counts.items():
            counts[key] = counts.get(key, 0) + n
    return counts


async def list_all(api: ApiClient, *, state: str | None, label: str | Sequence[str] | None) -> JobList:
    """Page through every matching job; ``counts`` is the server's count over all of them."""
    jobs: list[JobView] = []
    counts: dict[str, int] = {}
    async for page in pages(api, state=state, label=label):
        counts = counts or dict(page.counts)
        jobs.extend(page.jobs)
    return JobList(jobs=jobs, counts=counts)


async def pages(
    api: ApiClient,
    *,
    state: str | None,
    label: str | Sequence[str] | None,
    newest_first: bool = False,
    size: int = PAGE_SIZE,
    after: int | None = None,
) -> AsyncIterator[JobList]:
    """The matching jobs page by page, each page asked past the last id of the one before (keyset
    paging: every page costs the server what the first does, and no job is skipped or listed twice
    while jobs change state between pages). The first page carries the counts. A server that does
    not know ``after`` (it answers the first page again) is paged by offset instead. ``after``: start
    past this id (the first page then carries no counts)."""
    listed = 0
    first = after is None
    keyset = True
    while True:
        if keyset:
            page = await api.list_jobs(
                state=state, label=label, limit=size, after=after, newest_first=newest_first, counts=first
            )
            if after is not None and page.jobs and not _past(page.jobs[0].id, after, newest_first):
                keyset = False  # a server from before keyset paging: this page again, by offset
                continue
        else:
            page = await api.list_jobs(state=state, label=label, limit=size, offset=listed, newest_first=newest_first)
            page.counts = {}
        yield page
        first = False
        listed += len(page.jobs)
        if len(page.jobs) < size:
            return
        after = page.jobs[-1].id


def _past(job_id: int, after: int, newest_first: bool) -> bool:
    return job_id < after if newest_first else job_id > after


def require_found(ids: Sequence[int], jobs: Sequence[JobView]) -> None:
    missing = sorted(set(ids) - {j.id for j in jobs})
    if missing:
        raise NotFoundError(
            f"No job {render.compress_ids(missing)} (or not yours).",
            hint="Check the ids with: glidein status",
        )


class RideOut:
    """Retry calls while the server is not answering (connection refused or reset, 502/503 during a
    restart): 1 s doubling to 10 s, for ``give_up_s`` in all; one line on stderr says so, once."""

    def __init__(self, give_up_s: float = RIDE_OUT_S) -> None:
        self.give_up_s = give_up_s
        self.told = False

    async def __call__(self, call: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.give_up_s
        delay = 1.0
        while True:
            try:
                return await call()
            except ServerUnreachable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                if not self.told:
                    self.told = True
                    print(
                        f"The server is not answering ({exc.message.rstrip('.')}); "
                        f"trying again for up to {self.give_up_s:.0f} s.",
                        file=sys.stderr,
                        flush=True,
                    )
                await asyncio.sleep(delay)
                delay = min(MAX_RETRY_S, delay * 2)


async def default_ids(api: ApiClient, url: str) -> list[int]:
    """What ``wait`` and ``status`` without ids are about: the jobs of the last submit and every job
    still active (idle, claimed, running, held), as ``condor_q`` shows -- not all of history."""
    active = await bounded(3, lambda s: list_all(api, state=s.value, label=None), ACTIVE_STATES)
    return sorted({*(j.id for listed in active for j in listed.jobs), *lastsubmit.last(url)})
