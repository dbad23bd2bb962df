"""Retention in the PostgreSQL store: finished jobs older than a cutoff leave with their attempts and outputs."""

from __future__ import annotations

from glidein_server.store.base import Purged
from glidein_server.store.postgres_base import Connection, PostgresBase, Q


class PostgresRetention(PostgresBase):
    async def purge_finished(self, before: float, limit: int) -> Purged:
        async def tx(con: Connection) -> Purged:
            ids = [r[0] for r in await con.fetch(Q["purge_pick"], before, limit)]
            if not ids:
                return Purged()
            hashes = {r[0] for r in await con.fetch(Q["purge_outputs"], ids)}
            attempts = int((await con.execute(Q["purge_attempts"], ids)).split()[-1])
            await con.execute(Q["purge_staged"], ids)
            await con.execute(Q["purge_events"], ids)
            jobs = int((await con.execute(Q["purge_jobs"], ids)).split()[-1])
            orphans = [h for h in sorted(hashes) if not await con.fetchval(Q["file_referenced"], h)]
            return Purged(jobs=jobs, attempts=attempts, orphan_files=tuple(orphans))

        return await self._tx(tx)
