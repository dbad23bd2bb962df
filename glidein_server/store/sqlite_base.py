"""The plumbing of the SQLite store: one connection in one worker thread, group commit.

Every public method of the store runs in that thread, so the event loop never blocks on the
database and writes never interleave. Calls that arrive while the thread is busy wait together and
run as one batch: the reads first, then the writes in one transaction, each write in a savepoint of
its own (an error rolls back that call alone), committed once for the batch. A caller hears back
only after the commit, so each call is still atomic and durable as its own transaction would be,
but a batch pays one thread hand-off and one WAL commit instead of one per call. WAL mode with
synchronous=NORMAL survives a killed server process.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from glidein_client.wire.schema import PilotShape
from glidein_server.policy.fairshare import Shares
from glidein_server.policy.retry import RetryPolicy
from glidein_server.store import sqlfile

T = TypeVar("T")
Q = sqlfile.load("sqlite.sql")
#: A call waiting for the worker: the function, its arguments, whether it writes, and its future.
Call = tuple[Callable[..., Any], tuple[Any, ...], bool, "asyncio.Future[Any]"]
#: At most this many calls run in one batch (one transaction).
BATCH = 256
#: Batches look for other connections' commits at most this often (seconds).
LOOK_S = 0.25


class SqliteBase:
    def __init__(self, path: str, *, retry: RetryPolicy | None = None, shares: Shares | None = None) -> None:
        self.path = path
        self.retry = retry or RetryPolicy()
        self.shares = shares or Shares()  # users' fair shares of the cores
        self._runtime_ratio = (0.0, 1.0)  # (until, ratio): what jobs use of their walltime, learnt
        self._site_shapes: dict[str, PilotShape] = {}  # a cache of the sites table's shapes
        self._db: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._waiting: list[Call] = []  # touched only by the event loop's thread
        self._draining = False
        self._data_version: int | None = None  # changes when another connection commits to the database
        self.checked_at = -float("inf")  # when a batch last looked for other connections' commits (monotonic)

    async def open(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        await self._run(self._open)

    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA cache_size=-262144")  # up to 256 MiB of pages: a million jobs' indexes stay in memory
        db.execute("PRAGMA foreign_keys=OFF")
        self._prepare(db)
        self._db = db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Create or upgrade the tables and load what the store keeps in memory (in the worker thread)."""

    def _changed_elsewhere(self) -> None:
        """Another connection (another process: a ``glidein-server`` command) committed: forget what
        the store keeps in memory that such a command may change (in the worker thread)."""

    def _look_for_other_writers(self, db: sqlite3.Connection) -> None:
        """Notice other processes' commits (at most every ``LOOK_S``: the pragma costs a statement)."""
        if time.monotonic() - self.checked_at < LOOK_S:
            return
        version = db.execute(Q["data_version"]).fetchone()[0]
        if version != self._data_version:
            self._data_version = version
            self._changed_elsewhere()
        self.checked_at = time.monotonic()

    async def close(self) -> None:
        if self._pool is None:
            return
        if self._db is not None:
            await self._run(self._db.close)
        self._pool.shutdown(wait=True)
        self._pool = None
        self._db = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _tx(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(connection, *args)`` as one atomic write, committed before this returns."""
        return await self._queue(fn, (self._conn, *args), True)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the worker thread with the next batch, outside its transaction."""
        return await self._queue(fn, args, False)

    async def _queue(self, fn: Callable[..., T], args: tuple[Any, ...], writes: bool) -> T:
        if self._pool is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._waiting.append((fn, args, writes, future))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())  # noqa: RUF006 - it ends when nothing waits; callers await their futures
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
                try:
                    outcomes = await self._run(self._run_batch, batch)
                except BaseException as exc:  # the batch could not run or commit: every call hears it
                    outcomes = [(False, exc)] * len(batch)
                for (_, _, _, future), (ok, value) in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
        finally:
            self._draining = False

    def _run_batch(self, batch: list[Call]) -> list[tuple[bool, Any]]:
        """In the worker thread: the reads, then the writes in one transaction, one savepoint each."""
        outcomes: list[tuple[bool, Any]] = [(False, None)] * len(batch)
        self._look_for_other_writers(self._conn)
        for i, (fn, args, writes, _) in enumerate(batch):
            if not writes:
                try:
                    outcomes[i] = (True, fn(*args))
                except Exception as exc:
                    outcomes[i] = (False, exc)
        if not any(writes for _, _, writes, _ in batch):
            return outcomes
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            for i, (fn, args, writes, _) in enumerate(batch):
                if not writes:
                    continue
                db.execute("SAVEPOINT call")
                try:
                    outcomes[i] = (True, fn(*args))
                except Exception as exc:
                    db.execute("ROLLBACK TO call")
                    outcomes[i] = (False, exc)
                db.execute("RELEASE call")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return outcomes

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db
