"""The SQLite store keeps the tokens it found in memory: revocations and renewals must still hold."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from glidein_client.wire.schema import Role
from glidein_server.store import sqlite_base, sqlite_tokens
from glidein_server.store.sqlite import SqliteStore

HASH = "t" * 64


async def test_a_renewal_or_revocation_here_is_seen_at_once(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "glidein.db"))
    await store.open()
    try:
        token_id = await store.add_token(HASH, Role.PILOT, "7", time.time() + 100)
        found = await store.lookup_token(HASH, time.time())
        assert found is not None and found.subject == "7"
        await store.renew_token(token_id, time.time() + 5000)
        renewed = await store.lookup_token(HASH, time.time())
        assert renewed is not None and renewed.expires_at is not None and renewed.expires_at > time.time() + 4000
        assert await store.revoke_token(token_id, time.time()) == [token_id]
        assert await store.lookup_token(HASH, time.time()) is None
    finally:
        await store.close()


async def test_a_revocation_by_another_process_is_seen_within_the_fresh_time(tmp_path: Path) -> None:
    path = str(tmp_path / "glidein.db")
    server, command = SqliteStore(path), SqliteStore(path)  # two connections, as a server and a CLI command
    await server.open()
    await command.open()
    try:
        token_id = await server.add_token(HASH, Role.USER, "alice", None)
        assert await server.lookup_token(HASH, time.time()) is not None
        assert await command.revoke_token(token_id, time.time()) == [token_id]
        await asyncio.sleep(sqlite_tokens.FRESH_S + sqlite_base.LOOK_S)
        assert await server.lookup_token(HASH, time.time()) is None
    finally:
        await command.close()
        await server.close()
