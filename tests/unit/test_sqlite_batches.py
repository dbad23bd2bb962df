"""The SQLite store's group commit: calls that wait together share a transaction, not their failures."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from glidein_client.wire.errors import ConflictError
from glidein_client.wire.schema import JobSpec
from glidein_server.store.base import JobFilter
from glidein_server.store.sqlite import SqliteStore


async def test_a_failing_call_rolls_back_alone_and_the_others_commit(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "g.db"))
    await store.open()
    batches: list[int] = []
    run_batch = store._run_batch

    def counting(batch: list[object]) -> list[tuple[bool, object]]:
        batches.append(len(batch))
        return run_batch(batch)  # type: ignore[arg-type]

    store._run_batch = counting  # type: ignore[method-assign]

    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES ('half', 'written')")
        raise ConflictError("refused halfway")

    spec = JobSpec(argv=["true"])
    results = await asyncio.gather(
        *(store.add_jobs("alice", [spec], 1.0) for _ in range(5)),
        store._tx(half_then_fail),
        *(store.add_jobs("bob", [spec], 1.0) for _ in range(5)),
        return_exceptions=True,
    )
    assert isinstance(results[5], ConflictError)
    ids = [r[0] for r in results if isinstance(r, list)]
    assert len(set(ids)) == 10
    assert max(batches) > 1  # the calls did share batches
    await store.close()

    reopened = SqliteStore(str(tmp_path / "g.db"))
    await reopened.open()
    jobs, _ = await reopened.list_jobs(JobFilter())
    assert sorted(j.id for j in jobs) == sorted(ids)
    db = sqlite3.connect(tmp_path / "g.db")
    assert db.execute("SELECT count(*) FROM meta WHERE key = 'half'").fetchone()[0] == 0
    db.close()
    await reopened.close()


async def test_a_batch_that_cannot_commit_fails_every_write_in_it(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "g.db"))
    await store.open()
    other = sqlite3.connect(tmp_path / "g.db", timeout=0)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    store._conn.execute("PRAGMA busy_timeout = 50")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        await store.add_jobs("alice", [JobSpec(argv=["true"])], 1.0)
    other.execute("ROLLBACK")
    other.close()
    assert await store.add_jobs("alice", [JobSpec(argv=["true"])], 1.0) == [1]
    await store.close()
