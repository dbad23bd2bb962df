"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from glidein_server.store.base import Store
from glidein_server.store.postgres import PostgresStore
from glidein_server.store.sqlite import SqliteStore


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An open store of each backend in turn: SQLite in the test's directory, PostgreSQL in a
    fresh database of the session's real server. A test module may define its own."""
    s: Store
    if request.param == "sqlite":
        s = SqliteStore(str(tmp_path / "glidein.db"))
    else:
        s = PostgresStore(request.getfixturevalue("postgres_url"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()
