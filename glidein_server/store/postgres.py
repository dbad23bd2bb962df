"""PostgreSQL implementation of the Store: the scale-out backend, shared by any number of replicas.

One class assembled from small parts: plumbing, migrations and LISTEN/NOTIFY (postgres_base),
tokens (postgres_tokens), jobs, sites and staging (postgres_jobs), attempts ending by the
lifecycle's plans (postgres_attempts), pilots and claims (postgres_pilots). Its SQL is in
sql/postgres.sql.
"""

from __future__ import annotations

from glidein_server.policy.fairshare import Shares
from glidein_server.policy.reservation import ReservationPolicy
from glidein_server.policy.retry import RetryPolicy
from glidein_server.store.postgres_actions import PostgresJobActions
from glidein_server.store.postgres_base import Q, redact
from glidein_server.store.postgres_pilots import PostgresPilots
from glidein_server.store.postgres_retention import PostgresRetention
from glidein_server.store.reservations import DEFAULT_POLICY

__all__ = ["PostgresStore", "is_postgres_url", "redact"]


def is_postgres_url(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


class PostgresStore(PostgresRetention, PostgresJobActions, PostgresPilots):
    """``reservation=None`` turns bounded reservations off."""

    def __init__(
        self,
        url: str,
        *,
        retry: RetryPolicy | None = None,
        shares: Shares | None = None,
        pool_size: int = 10,
        reservation: ReservationPolicy | None = DEFAULT_POLICY,
    ) -> None:
        super().__init__(url, retry=retry, shares=shares, pool_size=pool_size)
        self.reservation = reservation

    async def recover(self, now: float, grace_s: float) -> None:
        """After a restart: give pilots ``grace_s`` to reconnect before their jobs count as lost, and
        start listening for the other replicas' news."""

        async with self.pool.acquire() as con, con.transaction():
            await con.execute(Q["recover_leases"], now + grace_s)
            await con.execute(Q["recover_pilots"], now)
        await self.listen()
