"""A replica's ear on the database: one connection LISTENing, checked a few times a second.

Other replicas (and ``glidein-server`` commands) tell this one through ``NOTIFY`` that jobs became
claimable (``glidein_work``: wake the long-polling pilots) or that tokens changed (``glidein_tokens``,
sent by a trigger on the tokens table with the token's public id: forget it). PostgreSQL hands a
listening session the notifications of every transaction that committed before it answers that
session's next query, so each answer to the ``SELECT 1`` sent every ``PING_S`` seconds proves that
every change committed before the ping was sent has been heard. :meth:`Listener.heard_within`
says whether that proof is recent: what is kept in memory on the strength of notifications may be
trusted only then. A lost connection is reopened; since notifications sent meanwhile are lost,
``missed`` is called once it listens again (forget what was kept; wake every pilot).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncpg

if TYPE_CHECKING:
    Connection = asyncpg.Connection[asyncpg.Record]
else:
    Connection = Any

log = logging.getLogger(__name__)
#: How often the listening connection is checked (a ping of one round trip).
PING_S = 0.25
PING_TIMEOUT_S = 5.0


class Listener:
    def __init__(self, url: str, channels: dict[str, Callable[[str], None]], missed: Callable[[], None]) -> None:
        self.url = url
        self.channels = channels  # channel -> called with each notification's payload
        self.missed = missed  # called whenever notifications may have been lost
        self._con: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._heard_at = -math.inf  # monotonic time of sending the last ping that was answered
        self._warned = False

    async def start(self) -> None:
        """Listen (the first connection's failure is the caller's error), and keep listening."""
        if self._task is not None:
            return
        await self._connect()
        self._task = asyncio.create_task(self._keep_listening())

    def heard_within(self, seconds: float) -> bool:
        """Whether every notification committed more than ``seconds`` ago has been handled."""
        return time.monotonic() - self._heard_at < seconds

    async def _connect(self) -> None:
        con: Connection = await asyncpg.connect(self.url)
        for channel, handler in self.channels.items():
            await con.add_listener(channel, _payload_to(handler))
        self._con = con
        self.missed()  # whatever was notified before LISTEN took effect was not heard

    async def _keep_listening(self) -> None:
        while True:
            await asyncio.sleep(PING_S)
            try:
                if self._con is None or self._con.is_closed():
                    self._con = None
                    await self._connect()
                    log.info("listening to the database's notifications again")
                    self._warned = False
                sent = time.monotonic()
                await self._con.fetchval("SELECT 1", timeout=PING_TIMEOUT_S)  # type: ignore[union-attr]
                self._heard_at = sent
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as exc:
                if not self._warned:
                    log.warning("lost the database connection that listens for other replicas' news: %s", exc)
                    self._warned = True
                self._heard_at = -math.inf
                await self._drop()

    async def _drop(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.terminate()

    async def close(self) -> None:
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._heard_at = -math.inf
        if self._con is not None:
            con, self._con = self._con, None
            try:
                await con.close(timeout=5)
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
                con.terminate()


def _payload_to(handler: Callable[[str], None]) -> Callable[..., None]:
    def callback(_con: Any, _pid: int, _channel: str, payload: str) -> None:
        handler(payload)

    return callback
