"""The SQLite store keeps each site's mode, cap and staging in memory: an operator's change still holds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from glidein_client.wire.schema import JobSpec, PilotRegister, Resources, SiteMode, SyncRequest
from glidein_client.wire.staging import Network
from glidein_server.store import sqlite_base
from glidein_server.store.sqlite import SqliteStore

FREE = Resources(cpus=2, memory_mb=4000, disk_mb=1000)


async def pilot(store: SqliteStore) -> int:
    pid = await store.new_pilot("s", time.time())
    await store.register_pilot(pid, PilotRegister(resources=FREE, end_time=time.time() + 3600), time.time())
    return pid


async def sync(store: SqliteStore, pid: int) -> tuple[int, str | None]:
    resp = await store.sync(pid, SyncRequest(free=FREE, lifetime_s=3600), time.time(), 60)
    return len(resp.jobs), resp.leave


async def test_this_stores_drain_cap_and_staging_are_seen_by_the_next_sync(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "glidein.db"))
    await store.open()
    try:
        await store.add_jobs("alice", [JobSpec(argv=["true"], memory_mb=100)] * 6, time.time())
        first, second = await pilot(store), await pilot(store)
        assert await sync(store, first) == (2, None)  # the site's controls are now kept in memory
        await store.set_site_cap("s", 3)
        assert await sync(store, second) == (1, None)  # 2 of 3 cores in use: room for one
        await store.set_site_cap("s", None)
        await store.set_site_network("s", Network.NONE, time.time())
        assert await sync(store, second) == (0, None)  # its client stages inputs: none is staged
        await store.set_site_mode("s", SiteMode.DRAINING)
        assert (await sync(store, second))[1] is not None
    finally:
        await store.close()


async def test_a_drain_by_another_process_is_seen_within_the_look_time(tmp_path: Path) -> None:
    path = str(tmp_path / "glidein.db")
    server, command = SqliteStore(path), SqliteStore(path)  # two connections, as a server and a CLI command
    await server.open()
    await command.open()
    try:
        await server.add_jobs("alice", [JobSpec(argv=["true"], memory_mb=100)] * 4, time.time())
        pid = await pilot(server)
        assert await sync(server, pid) == (2, None)
        await command.set_site_mode("s", SiteMode.PAUSED)
        await asyncio.sleep(sqlite_base.LOOK_S + 0.05)
        assert await sync(server, pid) == (0, None)  # paused: no new claims
        await command.set_site_mode("s", SiteMode.DRAINING)
        await asyncio.sleep(sqlite_base.LOOK_S + 0.05)
        assert (await sync(server, pid))[1] is not None
    finally:
        await command.close()
        await server.close()
