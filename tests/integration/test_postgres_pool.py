"""The PostgreSQL store's connection pool, on a real PostgreSQL: connections are reused while
they are sound, never more than the pool's size are open, callers wait their turn, and a
connection in an unknown state (a cancelled statement, an open transaction, closed by the
server) is never lent again."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from glidein_server.store.postgres_pool import ConnectionPool


async def backends(url: str) -> set[int]:
    """The process ids of the database's client backends other than the asking one."""
    con = await asyncpg.connect(url)
    try:
        rows = await con.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        )
        return {int(r[0]) for r in rows}
    finally:
        await con.close()


async def pid_of(pool: ConnectionPool) -> int:
    return int(await pool.fetchval("SELECT pg_backend_pid()"))


async def test_a_connection_is_reused_and_no_more_than_the_size_are_opened(postgres_url: str) -> None:
    pool = ConnectionPool(postgres_url, 2)
    await pool.open()
    try:
        first = await pid_of(pool)
        assert [await pid_of(pool) for _ in range(5)] == [first] * 5
        order: list[int] = []

        async def hold(n: int) -> None:
            async with pool.acquire() as con:
                await con.execute("SELECT pg_sleep(0.05)")
                order.append(n)

        await asyncio.gather(*(hold(n) for n in range(6)))  # 6 callers share 2 connections
        assert sorted(order) == list(range(6))
        assert len(await backends(postgres_url)) == 2
    finally:
        await pool.close()
    assert await backends(postgres_url) == set()


async def test_callers_waiting_for_a_connection_are_served_first_come_first_served(postgres_url: str) -> None:
    pool = ConnectionPool(postgres_url, 1)
    await pool.open()
    served: list[int] = []
    try:
        async with pool.acquire():

            async def wait(n: int) -> None:
                async with pool.acquire():
                    served.append(n)

            waiters = [asyncio.create_task(wait(n)) for n in range(4)]
            await asyncio.sleep(0.05)
            assert served == []  # all wait while the one connection is lent
        await asyncio.gather(*waiters)
        assert served == [0, 1, 2, 3]
    finally:
        await pool.close()


async def test_an_error_reported_by_postgresql_keeps_the_connection(postgres_url: str) -> None:
    pool = ConnectionPool(postgres_url, 2)
    await pool.open()
    try:
        before = await pid_of(pool)
        with pytest.raises(asyncpg.DivisionByZeroError):
            await pool.fetchval("SELECT 1 / 0")
        with pytest.raises(LookupError):
            async with pool.acquire() as con:
                await con.execute("SELECT 1")
                raise LookupError("the store's own refusal, between statements")
        assert await pid_of(pool) == before
    finally:
        await pool.close()


async def test_a_statement_cancelled_midway_closes_its_connection(postgres_url: str) -> None:
    pool = ConnectionPool(postgres_url, 1)
    await pool.open()
    try:
        before = await pid_of(pool)
        slow = asyncio.create_task(pool.execute("SELECT pg_sleep(30)"))
        await asyncio.sleep(0.2)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        after = await pid_of(pool)  # a fresh connection, not the one whose statement may still run
        assert after != before
        for _ in range(100):
            if before not in await backends(postgres_url):
                break
            await asyncio.sleep(0.05)
        assert await backends(postgres_url) == {after}
    finally:
        await pool.close()


async def test_a_connection_left_in_a_transaction_is_not_lent_again(postgres_url: str) -> None:
    pool = ConnectionPool(postgres_url, 1)
    await pool.open()
    try:
        async with pool.acquire() as con:
            before = int(await con.fetchval("SELECT pg_backend_pid()"))
            await con.execute("BEGIN")
            await con.execute("CREATE TABLE half_done (x int)")
        async with pool.acquire() as con:
            assert int(await con.fetchval("SELECT pg_backend_pid()")) != before
            assert await con.fetchval("SELECT to_regclass('half_done')") is None  # rolled back with it
    finally:
        await pool.close()


async def test_a_connection_the_server_closed_is_replaced(postgres_url: str) -> None:
    pool = ConnectionPool(postgres_url, 1)
    await pool.open()
    try:
        before = await pid_of(pool)
        admin = await asyncpg.connect(postgres_url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", before)
        finally:
            await admin.close()
        for _ in range(100):  # the idle connection hears that its server process ended
            if not pool._idle or pool._idle[0].is_closed():
                break
            await asyncio.sleep(0.02)
        assert await pid_of(pool) not in (before, 0)
    finally:
        await pool.close()


async def test_a_closed_pool_lends_nothing_and_fails_its_waiters(postgres_url: str) -> None:
    pool = ConnectionPool(postgres_url, 1)
    await pool.open()
    async with pool.acquire():
        waiter = asyncio.create_task(pool.fetchval("SELECT 1"))
        await asyncio.sleep(0.05)
        await pool.close()
        with pytest.raises(asyncpg.InterfaceError, match="closed"):
            await waiter
    with pytest.raises(asyncpg.InterfaceError, match="closed"):
        await pool.fetchval("SELECT 1")
    for _ in range(100):
        if not await backends(postgres_url):
            break
        await asyncio.sleep(0.02)
    assert await backends(postgres_url) == set()  # the lent one was closed as it came back


async def test_a_new_connection_knows_the_warm_statements_types_before_it_is_lent(postgres_url: str) -> None:
    from glidein_server.store.postgres_base import Q

    def known(con: asyncpg.Connection[asyncpg.Record], type_name: str) -> bool:
        settings = con._protocol.get_settings()  # asyncpg's codecs of this connection
        return any(settings.get_data_codec(oid) is not None for oid in oids[type_name])

    plain = await asyncpg.connect(postgres_url)
    oids = {t: [await plain.fetchval(f"SELECT '{t}'::regtype::oid")] for t in ("bigint[]", "double precision[]")}
    assert not known(plain, "bigint[]")  # asyncpg asks PostgreSQL at the first statement using it
    await plain.close()
    pool = ConnectionPool(postgres_url, 2, warm=Q["connection_types"])
    await pool.open()
    async with pool.acquire() as a, pool.acquire() as b:  # the first, and one opened on demand
        assert all(known(con, t) for con in (a, b) for t in oids)
        assert await b.fetchval("SELECT cardinality($1::bigint[])", [1, 2]) == 2
    await pool.close()
    bad = ConnectionPool(postgres_url, 1, warm="SELECT $1::no_such_type[]")
    with pytest.raises(asyncpg.PostgresError):
        await bad.open()
    assert bad._count == 0
    await bad.close()
