"""The planner's statistics of the jobs table, refreshed in the background after bulk submits.

PostgreSQL's autovacuum analyzes a table once about a tenth of it changed, but it looks only every
minute or so: right after a million jobs arrive, the planner would still believe the table nearly
empty. The store counts the jobs it inserts and, once they reach half the table (and at least
``min_rows``), runs ``ANALYZE jobs`` on a pooled connection in a task of its own: a request never
waits for it, and at most one runs at a time in each replica. Half, not a tenth: the planner scales
the table's size to its current pages between analyzes, so what an analyze adds is the columns'
distributions, which a bulk load barely moves; at a tenth, analyzes (0.23 s of PostgreSQL's CPU each
at 200,000 jobs) followed each other through a long bulk load, twice as many, about 5 µs per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from glidein_server.store import sqlfile
from glidein_server.store.postgres_pool import ConnectionPool as Pool

log = logging.getLogger(__name__)
Q = sqlfile.load("postgres.sql")


class Statistics:
    def __init__(self, min_rows: int = 20_000, growth: float = 0.5) -> None:
        self.min_rows = min_rows
        self.growth = growth
        self.rows = 0.0  # the table's size at the last analyze, as the planner knows it
        self.added_since = 0
        self.analyzed = 0  # how many times this store analyzed the table
        self._task: asyncio.Task[None] | None = None

    async def load(self, pool: Pool) -> None:
        self.rows = max(0.0, float(await pool.fetchval(Q["jobs_estimate"]) or 0))

    def due(self) -> bool:
        return self.added_since >= max(self.min_rows, self.growth * self.rows)

    def added(self, n: int, pool: Pool) -> None:
        """``n`` jobs were inserted: analyze in the background when enough arrived since the last time."""
        self.added_since += n
        if self._task is None and self.due():
            self._task = asyncio.create_task(self._analyze(pool), name="analyze-jobs")

    async def _analyze(self, pool: Pool) -> None:
        try:
            while self.due():
                counted = self.added_since
                async with pool.acquire() as con:
                    await con.execute(Q["analyze"])
                    self.rows = max(0.0, float(await con.fetchval(Q["jobs_estimate"]) or 0))
                self.added_since -= counted
                self.analyzed += 1
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("could not refresh the statistics of the jobs table (autovacuum will): %s", exc)
        finally:
            self._task = None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
