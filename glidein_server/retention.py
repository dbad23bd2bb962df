"""Retention: jobs that finished long ago leave the database, with their attempts and output files.

``glidein-server purge --before 30d`` runs it once; a running server runs it every
``retention_interval_s`` for jobs finished more than ``retention_days`` ago (0: keep forever).
Each purge is logged with what it removed. Batches keep each transaction short, so claims and
heartbeats never wait long behind a purge.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from glidein_server.store.base import RetentionStore
from glidein_server.store.files import FileStore

log = logging.getLogger(__name__)
BATCH = 5000


@dataclass
class PurgeTotals:
    jobs: int = 0
    attempts: int = 0
    files: int = 0


async def purge(store: RetentionStore, files: FileStore, before: float, *, batch: int = BATCH) -> PurgeTotals:
    """Remove every job finished before ``before`` (epoch seconds), batch by batch, and the output
    files nothing refers to any more; log what went."""
    totals = PurgeTotals()
    while True:
        purged = await store.purge_finished(before, batch)
        if not purged.jobs:
            break
        totals.jobs += purged.jobs
        totals.attempts += purged.attempts
        totals.files += sum(files.remove(sha) for sha in purged.orphan_files)
        await asyncio.sleep(0)  # let requests in between batches
    if totals.jobs:
        log.info(
            "purged %d jobs finished before %s, %d attempts and %d output files",
            totals.jobs,
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(before)),
            totals.attempts,
            totals.files,
        )
    return totals


async def purge_forever(store: RetentionStore, files: FileStore, retention_days: float, interval_s: float) -> None:
    """The server's retention loop: purge, then wait ``interval_s``; errors are logged, never fatal."""
    while True:
        try:
            await purge(store, files, time.time() - retention_days * 86400)
        except Exception:
            log.exception("purging finished jobs failed; retrying in %.0f s", interval_s)
        await asyncio.sleep(interval_s)
