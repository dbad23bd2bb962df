"""A claim's candidate read on a real PostgreSQL: PostgreSQL runs it as one index seek per (user,
shape) however many jobs wait, reading of each shape no more jobs than the claiming pilots could take,
so the rows it reads are bounded by the users, the shapes that fit and the pilots, never by the
queue's length."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from glidein_client.wire.schema import JobSpec, Resources, SiteMode, SyncRequest
from glidein_server.policy.matchmaking import Capacity
from glidein_server.store.postgres import PostgresStore
from glidein_server.store.postgres_base import Q
from glidein_server.store.postgres_claims import Ask, shape_limit

#: Four 8-core pilots claiming together: at most 32 one-core jobs or 8 four-core ones.
ASKS = [
    Ask(
        pilot_id=n,
        site="site",
        req=SyncRequest(free=Resources(cpus=8, memory_mb=32_000, disk_mb=100_000), lifetime_s=86_400),
        total=Capacity(8, 32_000, 0, 100_000),
        control=(SiteMode.OPEN, None, None),
        now=1.0,
    )
    for n in range(4)
]


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    return [plan, *(n for child in plan.get("Plans", []) for n in nodes(child))]


async def test_candidates_are_read_by_user_and_shape_whatever_the_queue_length(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    try:
        shapes = [(1, 2000), (4, 8000), (16, 64000)]  # the last fits no 8-core pilot
        for owner in ("alice", "bob"):
            specs = [
                JobSpec(argv=["true"], cpus=c, memory_mb=m, walltime_s=3600, priority=i % 3)
                for i in range(6000)
                for c, m in [shapes[i % 3]]
            ]
            await store.add_jobs(owner, specs, 1.0)
        con = await asyncpg.connect(postgres_url)
        try:
            await con.execute("ANALYZE jobs")
            sql = "EXPLAIN (ANALYZE, FORMAT JSON) " + Q["idle_candidates"].replace("{limit}", shape_limit(ASKS))
            plan = json.loads(await con.fetchval(sql, 8, 32_000, 0, 100_000, 86_400, ",site,"))[0]["Plan"]
        finally:
            await con.close()
        scans = [n for n in nodes(plan) if n.get("Relation Name") == "jobs"]
        assert not [n for n in scans if n["Node Type"] == "Seq Scan"], scans
        seeks = [n for n in scans if n.get("Index Name") == "jobs_idle_shape" and "owner" in n.get("Index Cond", "")]
        assert len(seeks) == 1, scans
        seek = seeks[0]
        assert "hash" in seek["Index Cond"]  # the shape's key, not the user's jobs of every shape
        # Two users, two shapes that fit: four seeks, of 12,000 idle jobs each user's 32 one-core jobs
        # and 8 four-core ones (EXPLAIN gives the rows per seek on average).
        assert seek["Actual Loops"] == 4
        assert seek["Actual Rows"] * seek["Actual Loops"] == 2 * (32 + 8)
        assert seek.get("Rows Removed by Filter", 0) == 0
    finally:
        await store.close()
