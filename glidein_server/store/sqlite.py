"""SQLite implementation of the Store: the embedded default.

One class assembled from small parts, each one concept: plumbing (sqlite_base), tokens
(sqlite_tokens), sites, demand and staging (sqlite_sites), jobs (sqlite_jobs), attempts ending
by the lifecycle's plans (sqlite_attempts), pilots and claims (sqlite_pilots); what attempts used
and where they ran (sqlite_usage); counts for monitoring (sqlite_monitoring).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from glidein_server.policy.fairshare import Shares
from glidein_server.policy.reservation import ReservationPolicy
from glidein_server.policy.retry import RetryPolicy
from glidein_server.store import sqlfile
from glidein_server.store.reservations import DEFAULT_POLICY
from glidein_server.store.sqlite_actions import SqliteJobActions
from glidein_server.store.sqlite_base import Q
from glidein_server.store.sqlite_monitoring import SqliteMonitoring
from glidein_server.store.sqlite_pilots import SqlitePilots
from glidein_server.store.sqlite_retention import SqliteRetention
from glidein_server.store.sqlite_sites import sites_from_key, sites_key
from glidein_server.store.sqlite_usage import add_columns

__all__ = ["SqliteStore", "sites_from_key", "sites_key"]
log = logging.getLogger(__name__)


class SqliteStore(SqliteMonitoring, SqliteRetention, SqliteJobActions, SqlitePilots):
    """``monitoring=False`` drops the attempt outcomes only the metrics read (rebuilt when turned on again);
    ``reservation=None`` turns bounded reservations off."""

    def __init__(
        self,
        path: str,
        *,
        retry: RetryPolicy | None = None,
        shares: Shares | None = None,
        monitoring: bool = True,
        reservation: ReservationPolicy | None = DEFAULT_POLICY,
    ) -> None:
        super().__init__(path, retry=retry, shares=shares)
        self.monitoring_on = monitoring
        self.reservation = reservation

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.executescript(Q["schema"])
        self._migrate_tokens(db)
        add_columns(db, "attempts", Q["attempts_migrate"])
        add_columns(db, "sites", Q["sites_migrate"])
        db.executescript(Q["staging_schema"])
        db.executescript(Q["monitoring_tables"])
        add_columns(db, "job_counts", Q["job_counts_migrate"])
        db.executescript(Q["monitoring_schema"] if self.monitoring_on else Q["monitoring_off"])
        version = db.execute(Q["schema_version"]).fetchone()[0]
        for number, sql in sqlfile.migrations(Q):
            if number > version:
                log.info("upgrading the database schema to version %d", number)
                set_version = Q["schema_version_set"].replace("?", str(int(number)))
                db.executescript(f"BEGIN IMMEDIATE;\n{sql.rstrip().rstrip(';')};\n{set_version}\nCOMMIT;")
                version = number
        db.execute(Q["schema_version_set"], (str(version),))
        db.executescript(Q["job_counts_schema"])
        self._load_site_shapes(db)

    def watch(self, wake: Callable[[], None]) -> None:
        """One process owns a SQLite database: there are no other replicas to hear from."""

    async def recover(self, now: float, grace_s: float) -> None:
        """After a restart: give pilots ``grace_s`` to reconnect before their jobs count as lost."""

        def tx(db: sqlite3.Connection) -> None:
            db.execute(Q["recover_leases"], (now + grace_s,))
            db.execute(Q["recover_pilots"], (now,))

        await self._tx(tx)
