"""The SQLite store's group commit: calls that wait together share a transaction, not their failures."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from glidein_client.wire.errors import ConflictError
from glidein_client.wire.schema import JobSpec
from glidein_server.store import sqlite_base
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


async def test_quick_calls_run_in_the_event_loop_thread_and_a_failing_one_rolls_back_alone(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "g.db"))
    await store.open()
    threads: set[int] = set()

    def write(db: sqlite3.Connection, key: str) -> str:
        threads.add(threading.get_ident())
        db.execute("INSERT INTO meta (key, value) VALUES (?, 'written')", (key,))
        if key == "bad":
            raise ConflictError("refused after writing")
        return key

    keys = ["a", "b", "bad", "c", "d"]
    results = await asyncio.gather(*(store._quick_tx(write, k) for k in keys), return_exceptions=True)
    assert results[:2] == ["a", "b"] and results[3:] == ["c", "d"]
    assert isinstance(results[2], ConflictError)
    assert threads == {threading.get_ident()}  # this test's thread runs the event loop
    written = {r[0] for r in store._conn.execute("SELECT key FROM meta WHERE value = 'written'")}
    assert written == {"a", "b", "c", "d"}
    await store.close()


async def test_a_quick_call_does_not_hold_up_the_event_loop_while_another_process_writes(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "g.db"))
    await store.open()
    other = sqlite3.connect(tmp_path / "g.db", timeout=0)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    call = asyncio.ensure_future(
        store._quick_tx(lambda db: db.execute("INSERT INTO meta (key, value) VALUES ('quick', 'x')").rowcount)
    )
    ticks = 0
    for _ in range(20):  # the loop keeps turning while the call waits for the lock (in the worker)
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks == 20 and not call.done()
    other.execute("ROLLBACK")
    other.close()
    assert await asyncio.wait_for(call, 10) == 1
    await store.close()


async def test_the_log_is_checkpointed_beside_the_batches_that_never_wait_for_it(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "g.db"))
    await store.open()
    checkpoints: list[int] = []
    may_finish = threading.Event()
    checkpoint = store._checkpoint

    def slow() -> None:  # a checkpoint syncing a large log to a slow disk
        checkpoints.append(threading.get_ident())
        assert may_finish.wait(10)
        checkpoint()

    store._checkpoint = slow  # type: ignore[method-assign]
    store._checkpointed_at = 0.0
    await store.add_jobs("alice", [JobSpec(argv=["true"])], 1.0)
    await asyncio.sleep(0.05)
    worker = await store._run(threading.get_ident)
    assert len(checkpoints) == 1 and checkpoints[0] not in (threading.get_ident(), worker)
    # While it copies, batches in the worker and quick ones in the loop go on and commit.
    assert len(await store.add_jobs("alice", [JobSpec(argv=["true"])] * 3, 2.0)) == 3
    await store._quick_tx(lambda db: db.execute("INSERT INTO meta (key, value) VALUES ('quick', 'x')"))
    store._checkpointed_at = 0.0
    await store.add_jobs("alice", [JobSpec(argv=["true"])], 3.0)
    assert len(checkpoints) == 1  # one copy at a time
    may_finish.set()
    await store.close()  # waits for the copy
    db = sqlite3.connect(tmp_path / "g.db")
    assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 5
    assert db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    db.close()
    store = SqliteStore(str(tmp_path / "g.db"))
    await store.open()
    assert store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    await store.close()


async def test_a_burst_of_quick_calls_lets_the_event_loop_turn_between_batches(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "g.db"))
    await store.open()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    def write(db: sqlite3.Connection, key: int) -> int:
        db.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (f"k{key}",))
        return ticks

    running = asyncio.ensure_future(ticker())
    seen = await asyncio.gather(*(store._quick_tx(write, i) for i in range(3 * sqlite_base.QUICK_BATCH)))
    running.cancel()
    assert len(set(seen)) == 3  # three batches, the loop turning between them
    assert store._conn.execute("SELECT count(*) FROM meta WHERE value = 'x'").fetchone()[0] == len(seen)
    await store.close()
