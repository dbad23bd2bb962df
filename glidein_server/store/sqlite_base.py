"""The plumbing of the SQLite store: one connection in one worker thread, one transaction per call.

Every public method of the store runs as one transaction in that thread, so the event loop never
blocks on the database and writes never interleave. WAL mode with synchronous=NORMAL survives a
killed server process.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from glidein_client.wire.schema import PilotShape
from glidein_server.policy.fairshare import Shares
from glidein_server.policy.retry import RetryPolicy
from glidein_server.store import sqlfile

T = TypeVar("T")
Q = sqlfile.load("sqlite.sql")


class SqliteBase:
    def __init__(self, path: str, *, retry: RetryPolicy | None = None, shares: Shares | None = None) -> None:
        self.path = path
        self.retry = retry or RetryPolicy()
        self.shares = shares or Shares()  # users' fair shares of the cores
        self._site_shapes: dict[str, PilotShape] = {}  # a cache of the sites table's shapes
        self._db: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        await self._run(self._open)

    def _open(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=OFF")
        self._prepare(db)
        self._db = db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Create or upgrade the tables and load what the store keeps in memory (in the worker thread)."""

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
        return await self._run(self._in_tx, fn, *args)

    def _in_tx(self, fn: Callable[..., T], *args: Any) -> T:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db, *args)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db
