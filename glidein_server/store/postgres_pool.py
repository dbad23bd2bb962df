"""The PostgreSQL store's connections: a small pool, lighter than asyncpg's own.

Every store call borrows one connection for a statement or a transaction. asyncpg's ``Pool``
spends about 80 µs of the server's CPU on each borrow and return (a proxy object, an inactivity
timer set and cancelled, and a task of its own for every return), more than a pilot's heartbeat
costs the server otherwise; here a borrow takes an idle connection from a list and a return puts
it back (or hands it straight to the caller waiting longest), a couple of µs.

A connection goes back to the pool only in a known state: outside any transaction, with no
statement in flight. One left by a cancellation, a timeout or a broken socket is closed for good
in the background (asyncpg first has PostgreSQL cancel a statement still running, as it does
whenever a caller gives up on one), and its place is free once it is gone; a new one is opened
when needed. An error that PostgreSQL reported, or one raised by the store's own code between
statements, leaves the connection as good as it was. Connections are opened on demand, up to
``size``; a caller who finds them all busy waits for one, first come first served. Each new
connection first runs the pool's ``warm`` statement, if any, with an empty list for each parameter:
asyncpg then learns the types that it names (array and record types, which it asks PostgreSQL
about, once per connection and type) before the connection is lent, not at a caller's first
statement that uses them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
from types import TracebackType
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    Connection = asyncpg.Connection[asyncpg.Record]
    Record = asyncpg.Record
else:
    Connection = Record = Any

#: Exceptions after which a connection's state is unknown (a statement may still be running).
_UNSAFE = (asyncio.CancelledError, TimeoutError, OSError, asyncpg.InterfaceError)
#: How long closing a connection may wait for PostgreSQL (a statement's cancellation, the goodbye).
CLOSE_S = 10.0


class ConnectionPool:
    def __init__(self, url: str, size: int, warm: str | None = None) -> None:
        self.url = url
        self.size = max(1, size)
        self.warm = warm
        self._idle: list[Connection] = []  # last in, first out: the warmest connection first
        self._waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
        self._count = 0  # connections open or being opened, idle or lent
        self._closed = False
        self._closing: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        """Open the first connection (so that a wrong URL or a database down fails here)."""
        self._count += 1
        try:
            self._idle.append(await self._connect())
        except BaseException:
            self._count -= 1
            raise

    async def _connect(self) -> Connection:
        con: Connection = await asyncpg.connect(self.url)
        if self.warm is not None:
            try:
                await con.fetchrow(self.warm, *([] for _ in set(re.findall(r"\$\d+", self.warm))))
            except BaseException:
                con.terminate()
                raise
        return con

    def acquire(self) -> Lease:
        """``async with pool.acquire() as con:`` one connection, for the block."""
        return Lease(self)

    async def take(self) -> Connection:
        if self._closed:
            raise asyncpg.InterfaceError("the database connection pool is closed")
        while self._idle:
            con = self._idle.pop()
            if not con.is_closed():
                return con
            self._count -= 1  # the server closed it meanwhile
        if self._count < self.size:
            self._count += 1
        else:
            waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed one just as this caller gave up
                    got = waiter.result()
                    if got is None:
                        self._count -= 1
                        self._pass_on(None)
                    else:
                        self.give_back(got, reusable=True)
                raise
            if handed is not None and not handed.is_closed():
                return handed
            if handed is not None:
                handed.terminate()  # closed since: its place is this caller's to fill
        try:  # a place is held for this caller: open a connection in it
            return await self._connect()
        except BaseException:
            self._count -= 1
            self._pass_on(None)
            raise

    def give_back(self, con: Connection, *, reusable: bool) -> None:
        """Return ``con``; with ``reusable`` false, or in an unknown state, it is closed instead."""
        if con.is_closed():
            self._count -= 1
            self._pass_on(None)
        elif self._closed or not reusable or con.is_in_transaction():
            task = asyncio.get_running_loop().create_task(self._close(con))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        else:
            self._pass_on(con)

    async def _close(self, con: Connection) -> None:
        """Close ``con`` (an unknown state: a statement may still be running); then its place is free."""
        try:
            with contextlib.suppress(Exception):  # asyncpg aborts the connection when it cannot close it
                await con.close(timeout=CLOSE_S)
        finally:
            self._count -= 1
            self._pass_on(None)

    def _pass_on(self, con: Connection | None) -> None:
        """Hand ``con`` (or, for None, a free place to open one in) to the caller waiting longest."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                if con is None:
                    self._count += 1
                waiter.set_result(con)
                return
        if con is not None:
            self._idle.append(con)

    async def fetch(self, query: str, *args: Any) -> list[Record]:
        async with self.acquire() as con:
            return await con.fetch(query, *args)

    async def fetchrow(self, query: str, *args: Any) -> Record | None:
        async with self.acquire() as con:
            return await con.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as con:
            return await con.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.acquire() as con:
            return await con.execute(query, *args)

    async def close(self) -> None:
        """Close the idle connections and those being closed; those lent are closed as they come back."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the database connection pool is closed"))
        idle, self._idle = self._idle, []
        for con in idle:
            self._count -= 1
            try:
                await con.close(timeout=5)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                con.terminate()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


class Lease:
    """One borrowed connection, returned when the block ends."""

    __slots__ = ("_con", "_pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._con: Connection | None = None

    async def __aenter__(self) -> Connection:
        self._con = await self._pool.take()
        return self._con

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        con, self._con = self._con, None
        if con is not None:
            safe = kind is None or (issubclass(kind, Exception) and not issubclass(kind, _UNSAFE))
            self._pool.give_back(con, reusable=safe)
