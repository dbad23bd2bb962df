"""Each PostgreSQL replica keeps the tokens it found in memory: a revocation, renewal or purge made
through any replica (or straight in the database, as a command would) must still be honoured by
every replica within the stated bound, and a replica that cannot hear the others must not trust
its memory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from glidein_client.wire.schema import Role
from glidein_server.store import postgres_listener, postgres_tokens
from glidein_server.store.postgres import PostgresStore

HASH = "a" * 64
OTHER = "b" * 64
#: The bound a revocation elsewhere is honoured within (a ping's period of slack on a loaded machine).
BOUND_S = postgres_tokens.FRESH_S + postgres_listener.PING_S


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    one, two = PostgresStore(postgres_url), PostgresStore(postgres_url)
    for store in (one, two):
        await store.open()
        await store.recover(time.time(), 0)  # as `serve` does: starts listening
    for store in (one, two):
        await until(lambda s=store: _hears(s), 5)  # type: ignore[misc]
    try:
        yield one, two
    finally:
        await two.close()
        await one.close()


async def looked_up_by_memory(store: PostgresStore, token_hash: str) -> bool:
    """Whether the store answers from memory: it does not read the database (its pool is closed)."""
    pool, store._pool = store._pool, None  # a read would fail: "store is not open"
    try:
        return await store.lookup_token(token_hash, time.time()) is not None
    except RuntimeError:
        return False
    finally:
        store._pool = pool


async def until(predicate: object, within_s: float) -> float:
    """Seconds until the awaitable-returning ``predicate()`` is true; fails after ``within_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within_s:
        if await predicate():  # type: ignore[operator]
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {within_s} s")


async def test_a_revocation_through_one_replica_is_refused_by_the_other_within_the_bound(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = replicas
    token_id = await one.add_token(HASH, Role.PILOT, "7", time.time() + 3600)
    assert await two.lookup_token(HASH, time.time()) is not None
    assert await looked_up_by_memory(two, HASH)  # a heartbeat no longer asks the database
    assert await one.revoke_token(token_id, time.time()) == [token_id]
    assert await one.lookup_token(HASH, time.time()) is None  # at once where it was revoked
    took = await until(lambda: _refused(two, HASH), BOUND_S)
    assert took < BOUND_S
    assert not await looked_up_by_memory(two, HASH)


async def test_a_revocation_in_the_database_and_a_purge_reach_every_replica(
    replicas: tuple[PostgresStore, PostgresStore], postgres_url: str
) -> None:
    one, two = replicas
    await one.add_token(HASH, Role.USER, "alice", None)
    await one.add_token(OTHER, Role.SITE, "s", time.time() - 10)
    for store in replicas:
        assert await store.lookup_token(HASH, time.time()) is not None
        assert await store.lookup_token(OTHER, time.time()) is not None
    con = await asyncpg.connect(postgres_url)  # as `glidein-server token revoke` on another host would
    try:
        await con.execute("UPDATE tokens SET revoked = true, revoked_at = $1 WHERE hash = $2", time.time(), HASH)
    finally:
        await con.close()
    for store in replicas:
        await until(lambda s=store: _refused(s, HASH), BOUND_S)  # type: ignore[misc]
    assert await two.purge_tokens(time.time()) == 2  # the expired one, and the revoked one
    await until(lambda: _refused(one, OTHER), BOUND_S)


async def test_a_renewal_elsewhere_is_seen_and_a_deaf_replica_reads_the_database(
    replicas: tuple[PostgresStore, PostgresStore],
) -> None:
    one, two = replicas
    token_id = await one.add_token(HASH, Role.PILOT, "7", time.time() + 100)
    assert await two.lookup_token(HASH, time.time()) is not None
    assert await looked_up_by_memory(two, HASH)
    await one.renew_token(token_id, time.time() + 5000)

    async def renewed() -> bool:
        found = await two.lookup_token(HASH, time.time())
        return found is not None and found.expires_at is not None and found.expires_at > time.time() + 4000

    await until(renewed, BOUND_S)
    assert two._listener is not None
    await two._listener.close()  # the replica no longer hears the others: memory is not trusted
    assert not await looked_up_by_memory(two, HASH)
    assert await two.lookup_token(HASH, time.time()) is not None  # from the database


async def _refused(store: PostgresStore, token_hash: str) -> bool:
    return await store.lookup_token(token_hash, time.time()) is None


async def _hears(store: PostgresStore) -> bool:
    return store._heard_within(postgres_tokens.FRESH_S)
