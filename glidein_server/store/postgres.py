"""PostgreSQL implementation of the Store: the scale-out backend, shared by any number of replicas.

One class assembled from small parts: plumbing, migrations and LISTEN/NOTIFY (postgres_base),
tokens (postgres_tokens), jobs, sites and staging (postgres_jobs), attempts ending by the
lifecycle's plans (postgres_attempts), pilots and claims (postgres_pilots). Its SQL is in
sql/postgres.sql.
"""

from __future__ import annotations

from glidein_server.store.postgres_actions import PostgresJobActions
from glidein_server.store.postgres_base import Q, redact
from glidein_server.store.postgres_pilots import PostgresPilots
from glidein_server.store.postgres_retention import PostgresRetention

__all__ = ["PostgresStore", "is_postgres_url", "redact"]


def is_postgres_url(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


class PostgresStore(PostgresRetention, PostgresJobActions, PostgresPilots):
    async def recover(self, now: float, grace_s: float) -> None:
        """After a restart: give pilots ``grace_s`` to reconnect before their jobs count as lost, and
        start listening for the other replicas' news."""

        async with self.pool.acquire() as con, con.transaction():
            await con.execute(Q["recover_leases"], now + grace_s)
            await con.execute(Q["recover_pilots"], now)
        await self.listen()
