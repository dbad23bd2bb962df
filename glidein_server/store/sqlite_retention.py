"""Retention in the SQLite store: finished jobs older than a cutoff leave with their attempts and outputs."""

from __future__ import annotations

import json
import sqlite3

from glidein_server.store.base import Purged
from glidein_server.store.sqlite_base import Q, SqliteBase


class SqliteRetention(SqliteBase):
    async def purge_finished(self, before: float, limit: int) -> Purged:
        def tx(db: sqlite3.Connection) -> Purged:
            ids = [r[0] for r in db.execute(Q["purge_pick"], (before, limit))]
            if not ids:
                return Purged()
            batch = json.dumps(ids)
            hashes = {r[0] for r in db.execute(Q["purge_outputs"], (batch,))}
            attempts = db.execute(Q["purge_attempts"], (batch,)).rowcount
            db.execute(Q["purge_staged"], (batch,))
            db.execute(Q["purge_labels"], (batch,))
            db.execute(Q["purge_events"], (batch,))
            jobs = db.execute(Q["purge_jobs"], (batch,)).rowcount
            orphans = tuple(sorted(h for h in hashes if not db.execute(Q["file_referenced"], (h, h)).fetchone()[0]))
            return Purged(jobs=jobs, attempts=attempts, orphan_files=orphans)

        return await self._tx(tx)
