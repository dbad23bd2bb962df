"""The plumbing of the PostgreSQL store: a connection pool, versioned migrations, LISTEN/NOTIFY.

Any number of server replicas share one database. Each public method of the store is one
transaction (retried a few times when PostgreSQL aborts it for a deadlock or a serialization
failure); claims lock rows with ``FOR UPDATE SKIP LOCKED`` so replicas never wait on each other's
jobs. A trigger sends ``NOTIFY glidein_work`` when jobs become idle; every replica listens on its
own connection and wakes its long-polling pilots, whichever replica queued the work.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from glidein_client.wire.errors import ConfigError
from glidein_client.wire.schema import PilotShape
from glidein_server.policy.fairshare import Shares
from glidein_server.policy.retry import RetryPolicy
from glidein_server.store import sqlfile
from glidein_server.store.postgres_listener import Listener
from glidein_server.store.postgres_pool import ConnectionPool
from glidein_server.store.postgres_statistics import Statistics

log = logging.getLogger(__name__)
T = TypeVar("T")
Q = sqlfile.load("postgres.sql")
CHANNEL = "glidein_work"
TOKENS_CHANNEL = "glidein_tokens"  # a trigger on the tokens table: the public id of a changed token
RETRIES = 5
if TYPE_CHECKING:
    Connection = asyncpg.Connection[asyncpg.Record]
    Record = asyncpg.Record
else:
    Connection = Record = Any


def redact(url: str) -> str:
    """The database URL without its password, for logs and messages."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


class PostgresBase:
    def __init__(
        self, url: str, *, retry: RetryPolicy | None = None, shares: Shares | None = None, pool_size: int = 10
    ) -> None:
        self.url = url
        self.retry = retry or RetryPolicy()
        self.shares = shares or Shares()  # users' fair shares of the cores
        self.pool_size = pool_size
        self._runtime_ratio = (0.0, 1.0)  # (until, ratio): what jobs use of their walltime, learnt
        self._site_shapes: dict[str, PilotShape] = {}  # refreshed from the sites table on every demand read
        self._pool: ConnectionPool | None = None
        self._listener: Listener | None = None
        self._wake: Callable[[], None] | None = None
        self.statistics = Statistics()  # the jobs table's, refreshed after bulk submits

    async def open(self) -> None:
        # The store's connections keep no session state (no SET, LISTEN, open cursor or
        # session-level lock), so one handed back to the pool needs no reset.
        pool = ConnectionPool(self.url, self.pool_size, warm=Q["connection_types"])
        try:
            await pool.open()
        except (OSError, asyncpg.PostgresError) as exc:
            raise ConfigError(
                f"Cannot reach the PostgreSQL database {redact(self.url)}: {exc}.",
                hint="Check that PostgreSQL runs and that the URL (database = ... in config.toml) is right.",
            ) from None
        self._pool = pool
        async with pool.acquire() as con, con.transaction():
            await con.execute(Q["schema_lock"])  # replicas starting together migrate one at a time
            await con.execute(Q["schema_version_table"])
            version = await con.fetchval(Q["schema_version"])
            for number, sql in sqlfile.migrations(Q):
                if number > version:
                    log.info("upgrading the database schema to version %d", number)
                    await con.execute(sql)
                    await con.execute(Q["schema_version_set"], str(number))
        await self._load()

    async def _load(self) -> None:
        """Load what the store keeps in memory."""
        await self.statistics.load(self.pool)

    def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever any replica makes jobs claimable (set before the first request)."""
        self._wake = wake

    async def listen(self) -> None:
        """Start listening for other replicas' notifications."""
        if self._listener is not None:
            return
        listener = Listener(self.url, self._channels(), self._missed)
        await listener.start()
        self._listener = listener

    def _channels(self) -> dict[str, Callable[[str], None]]:
        """What to do with each channel's notifications (parts of the store add theirs)."""
        return {CHANNEL: self._notified}

    def _missed(self) -> None:
        """Notifications may have been lost (the listening connection was opened or reopened)."""
        self._notified("")

    def _notified(self, _payload: str) -> None:
        if self._wake is not None:
            self._wake()

    def _heard_within(self, seconds: float) -> bool:
        """Whether every other replica's change committed more than ``seconds`` ago has been heard."""
        return self._listener is not None and self._listener.heard_within(seconds)

    async def close(self) -> None:
        await self.statistics.close()
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def _tx(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(connection, *args)`` in one transaction, again when PostgreSQL aborted it for a
        deadlock or a serialization failure (another replica touched the same rows)."""
        for attempt in range(RETRIES):
            try:
                async with self.pool.acquire() as con, con.transaction():
                    result: T = await fn(con, *args)
                return result
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == RETRIES - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _read(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        async with self.pool.acquire() as con:
            return await fn(con, *args)
