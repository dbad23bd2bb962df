"""The PostgreSQL store refreshes the planner's statistics of the jobs table after bulk submits, in the
background, on a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg

from glidein_client.wire.schema import JobSpec
from glidein_server.store.postgres import PostgresStore


async def analyzes(url: str) -> int:
    con = await asyncpg.connect(url)
    try:
        return int(await con.fetchval("SELECT analyze_count FROM pg_stat_user_tables WHERE relname = 'jobs'"))
    finally:
        await con.close()


async def settled(store: PostgresStore, url: str, want: int) -> int:
    for _ in range(200):
        if store.statistics.analyzed >= want:
            break
        await asyncio.sleep(0.05)
    return store.statistics.analyzed


async def test_a_large_submit_is_analyzed_in_the_background_and_a_small_one_is_not(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        store.statistics.min_rows = 500
        spec = JobSpec(argv=["true"], memory_mb=1000, walltime_s=600, labels={"ds": "x"})
        await store.add_jobs("alice", [spec] * 100, 1.0)
        await asyncio.sleep(0.3)
        assert store.statistics.analyzed == 0  # 100 jobs: below the threshold
        await store.add_jobs("alice", [spec] * 1000, 1.0)
        assert await settled(store, postgres_url, 1) == 1
        assert store.statistics.rows == 1100  # the planner now knows the table's size
        assert await analyzes(postgres_url) >= 1
        await store.add_jobs("alice", [spec] * 100, 1.0)  # under half the table: no new analyze
        await asyncio.sleep(0.3)
        assert store.statistics.analyzed == 1
        await store.add_jobs("alice", [spec] * 500, 1.0)
        assert await settled(store, postgres_url, 2) == 2
        assert store.statistics.rows == 1700
    finally:
        await store.close()
