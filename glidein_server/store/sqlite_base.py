"""The plumbing of the SQLite store: one connection, a worker thread, group commit.

Calls on the connection never interleave: they wait together and run as one batch, the reads
first, then the writes in one transaction, committed once for the batch. A call that fails rolls
back alone: the batch's writes then run again, each in a savepoint of its own (savepoints cost a
copy of every page a call changes, so they are taken only then). A caller hears back only after
the commit, so each call is still atomic and durable as its own transaction would be, but a batch
pays one WAL commit instead of one per call. WAL mode with synchronous=NORMAL survives a killed
server process.

Most calls run in the worker thread, so the event loop never waits for a long one (a bulk submit,
a page of jobs, a purge) nor for another process's write lock. Checkpoints run in a thread and on a
connection of their own, beside the batches: neither the loop nor the batches wait for a
checkpoint's copying and file syncs (in the worker they held up every call for tens of ms each second).
The pilots' hot path (a sync, a claim, a token) is quick, a fraction of a millisecond, and
frequent: those calls run in the event loop's own thread, batched the same way, where handing them
to the worker and back would cost more than the calls themselves (waking the thread, the
executor's futures, waking the loop, the two threads contending for the GIL). A batch of quick
calls runs only between the worker's batches, never beside one, and goes to the worker after all
when another process holds the write lock.
"""

from __future__ import annotations

import asyncio
import logging
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
log = logging.getLogger(__name__)
Q = sqlfile.load("sqlite.sql")
#: A call waiting for its batch: the function, its arguments, whether it writes, and its future.
Call = tuple[Callable[..., Any], tuple[Any, ...], bool, "asyncio.Future[Any]"]
#: At most this many calls run in one batch (one transaction).
BATCH = 256
#: At most this many quick calls run in one batch, in the event loop's thread: the loop turns between
#: batches, so a burst of claims (every waiting pilot woken by new work) holds it up for tens of ms.
QUICK_BATCH = 64
#: Batches look for other connections' commits at most this often (seconds).
LOOK_S = 0.25
#: How long the worker waits for another process's write lock (seconds); the event loop never waits.
BUSY_S = 30.0
#: The write-ahead log is copied into the database at most this often (seconds), beside the batches.
CHECKPOINT_S = 1.0


class SqliteBase:
    def __init__(self, path: str, *, retry: RetryPolicy | None = None, shares: Shares | None = None) -> None:
        self.path = path
        self.retry = retry or RetryPolicy()
        self.shares = shares or Shares()  # users' fair shares of the cores
        self._runtime_ratio = (0.0, 1.0)  # (until, ratio): what jobs use of their walltime, learnt
        self._site_shapes: dict[str, PilotShape] = {}  # a cache of the sites table's shapes
        self._db: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._checkpointer: ThreadPoolExecutor | None = None  # its thread and connection copy the log
        self._checkpoint_db: sqlite3.Connection | None = None
        self._checkpointing: asyncio.Future[None] | None = None
        self._waiting: list[Call] = []  # touched only by the event loop's thread
        self._quick: list[Call] = []  # calls run in the event loop's thread (see the module's doc)
        self._draining = False
        self._data_version: int | None = None  # changes when another connection commits to the database
        self.checked_at = -float("inf")  # when a batch last looked for other connections' commits (monotonic)
        self._checkpointed_at = 0.0  # when the last checkpoint began (monotonic)

    async def open(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        await self._run(self._open)
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-checkpoint")
        self._checkpoint_db = await asyncio.get_running_loop().run_in_executor(self._checkpointer, self._connect)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_S)

    def _open(self) -> None:
        db = self._connect()
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread copies the log (CHECKPOINT_S), never a commit
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

    def _rolled_back(self) -> None:
        """A batch's writes were rolled back: forget what the store keeps in memory that its calls
        may have read from what they wrote."""

    def _look_for_other_writers(self, db: sqlite3.Connection, now: bool = False) -> None:
        """Notice other processes' commits (at most every ``LOOK_S``: the pragma costs a statement;
        ``now``: whenever asked, as for a batch in the worker: what operators and site clients ask)."""
        if not now and time.monotonic() - self.checked_at < LOOK_S:
            return
        version = db.execute(Q["data_version"]).fetchone()[0]
        if version != self._data_version:
            self._data_version = version
            self._changed_elsewhere()
        self.checked_at = time.monotonic()

    async def close(self) -> None:
        if self._pool is None:
            return
        checkpointer, self._checkpointer = self._checkpointer, None  # no checkpoint begins from here on
        if checkpointer is not None:
            if self._checkpointing is not None:
                await asyncio.wait([self._checkpointing])
            if self._checkpoint_db is not None:
                await asyncio.get_running_loop().run_in_executor(checkpointer, self._checkpoint_db.close)
            checkpointer.shutdown(wait=True)
            self._checkpoint_db, self._checkpointing = None, None
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
        return await self._queue(self._waiting, fn, (self._conn, *args), True)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the worker thread with the next batch, outside its transaction."""
        return await self._queue(self._waiting, fn, args, False)

    async def _quick_tx(self, fn: Callable[..., T], *args: Any) -> T:
        """As :meth:`_tx`, in the event loop's thread: for a write of well under a millisecond."""
        return await self._queue(self._quick, fn, (self._conn, *args), True)

    async def _quick_read(self, fn: Callable[..., T], *args: Any) -> T:
        """As :meth:`_read`, in the event loop's thread: for a read of well under a millisecond."""
        return await self._queue(self._quick, fn, args, False)

    async def _queue(self, calls: list[Call], fn: Callable[..., T], args: tuple[Any, ...], writes: bool) -> T:
        if self._pool is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        calls.append((fn, args, writes, future))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())  # noqa: RUF006 - it ends when nothing waits; callers await their futures
        return await future

    async def _drain(self) -> None:
        """Run the waiting calls, a batch at a time: the quick ones in this thread, the others in the worker."""
        try:
            while self._quick or self._waiting:
                wrote = False
                if self._quick:
                    batch, self._quick = self._quick[:QUICK_BATCH], self._quick[QUICK_BATCH:]
                    try:
                        outcomes = self._run_batch(batch, wait=False)
                    except Exception as exc:  # the batch could not commit: every call hears it
                        outcomes = [(False, exc)] * len(batch)
                    if outcomes is None:  # another process holds the write lock: the worker waits for it
                        outcomes = await self._in_worker(batch)
                    _settle(batch, outcomes)
                    wrote = any(writes for _, _, writes, _ in batch)
                    if self._quick and not self._waiting:
                        await asyncio.sleep(0)  # let the loop serve other requests before the next batch
                if self._waiting:
                    batch, self._waiting = self._waiting[:BATCH], self._waiting[BATCH:]
                    _settle(batch, await self._in_worker(batch))
                    wrote = wrote or any(writes for _, _, writes, _ in batch)
                if wrote and time.monotonic() - self._checkpointed_at >= CHECKPOINT_S:
                    self._start_checkpoint()
        finally:
            self._draining = False

    async def _in_worker(self, batch: list[Call]) -> list[tuple[bool, Any]]:
        try:
            outcomes = await self._run(self._run_batch, batch)
        except BaseException as exc:  # the batch could not run or commit: every call hears it
            return [(False, exc)] * len(batch)
        assert outcomes is not None  # the worker waits for the write lock
        return outcomes

    def _start_checkpoint(self) -> None:
        """Begin copying the log into the database unless a copy is under way; nothing waits for it."""
        if self._checkpointer is None or (self._checkpointing is not None and not self._checkpointing.done()):
            return
        self._checkpointed_at = time.monotonic()
        self._checkpointing = asyncio.get_running_loop().run_in_executor(self._checkpointer, self._checkpoint)
        self._checkpointing.add_done_callback(_checkpointed)

    def _checkpoint(self) -> None:
        """Copy the write-ahead log into the database as far as readers allow (PASSIVE: batches go on
        writing meanwhile), in the checkpoint thread, on its connection."""
        if self._checkpoint_db is not None:  # None until open has made it
            self._checkpoint_db.execute(Q["wal_checkpoint"]).fetchall()

    def _run_batch(self, batch: list[Call], wait: bool = True) -> list[tuple[bool, Any]] | None:
        """The reads, then the writes in one transaction. The writes run as they are, and only when
        one fails does the transaction roll back and run them again, each in a savepoint of its own
        (a savepoint copies every page a call changes). Without ``wait`` (a quick batch, in the
        event loop's thread) None when another process holds the write lock: nothing was done."""
        db = self._conn
        outcomes: list[tuple[bool, Any]] = [(False, None)] * len(batch)
        self._look_for_other_writers(db, now=wait)
        for i, (fn, args, writes, _) in enumerate(batch):
            if not writes:
                try:
                    outcomes[i] = (True, fn(*args))
                except Exception as exc:
                    outcomes[i] = (False, exc)
        if not any(writes for _, _, writes, _ in batch):
            return outcomes
        if not self._begin(db, wait):
            return None
        try:
            if not self._writes(db, batch, outcomes, savepoints=False):
                self._rolled_back()
                if not self._begin(db, wait):
                    return None
                self._writes(db, batch, outcomes, savepoints=True)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._rolled_back()
            raise
        return outcomes

    @staticmethod
    def _begin(db: sqlite3.Connection, wait: bool) -> bool:
        """Take the write lock: waiting for another process's commit up to ``BUSY_S``, or, without
        ``wait``, False at once if another process holds it."""
        if wait:
            db.execute("BEGIN IMMEDIATE")
            return True
        db.execute("PRAGMA busy_timeout = 0")
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # busy: another process writes
            return False
        finally:
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_S * 1000)}")
        return True

    @staticmethod
    def _writes(db: sqlite3.Connection, batch: list[Call], outcomes: list[tuple[bool, Any]], savepoints: bool) -> bool:
        """Run the batch's writes in the open transaction; without savepoints, False (rolled back) when one fails."""
        for i, (fn, args, writes, _) in enumerate(batch):
            if not writes:
                continue
            if savepoints:
                db.execute("SAVEPOINT call")
            try:
                outcomes[i] = (True, fn(*args))
            except Exception as exc:
                if not savepoints:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    return False
                db.execute("ROLLBACK TO call")
                outcomes[i] = (False, exc)
            if savepoints:
                db.execute("RELEASE call")
        return True

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db


def _settle(batch: list[Call], outcomes: list[tuple[bool, Any]]) -> None:
    """Tell each caller of a batch its call's outcome."""
    for (_, _, _, future), (ok, value) in zip(batch, outcomes, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _checkpointed(done: asyncio.Future[None]) -> None:
    """A failed checkpoint is logged; the log is copied again at the next one."""
    if not done.cancelled() and done.exception() is not None:
        log.warning("checkpoint of the SQLite log failed; it will be tried again: %s", done.exception())
