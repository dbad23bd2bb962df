"""Bounded reservations in the SQLite store: the pilot a starving multicore job gets.

One statement per claiming sync reads the pilot's hold and the multicore jobs that may be starving
(:mod:`glidein_server.store.reservations` decides); a hold is written only when one begins or runs
out. Its SQL is in sql/sqlite_reservations.sql.
"""

from __future__ import annotations

import sqlite3

from glidein_server.policy.matchmaking import Candidate, Capacity
from glidein_server.policy.reservation import ReservationPolicy
from glidein_server.store import sqlfile
from glidein_server.store.reservations import (
    DEFAULT_POLICY,
    Gate,
    Write,
    decide,
    gate_args,
    gate_for,
    read_args,
    sql,
)
from glidein_server.store.sqlite_base import SqliteBase

R = sql(sqlfile.load("sqlite_reservations.sql"))


class SqliteReservations(SqliteBase):
    #: None: no reservations (the server's ``reservation_after_s = 0``).
    reservation: ReservationPolicy | None = DEFAULT_POLICY
    _reservation_gate: Gate | None = None

    def _reserve(
        self, db: sqlite3.Connection, pilot_id: int, site: str, total: Capacity, lifetime_s: float, now: float
    ) -> Candidate | None:
        """The job this claiming pilot holds its free cores for, or None."""
        policy = self.reservation
        if policy is None:
            return None
        gate = self._reservation_gate = gate_for(self._reservation_gate, policy)
        if gate.due(now):
            gate.refresh(now, *db.execute(R["reservation_gate"], gate_args(now, policy)).fetchone())
        if not gate.open(now):
            return None
        rows = db.execute(R["reservation_read"], read_args(pilot_id, site, total, lifetime_s, now, policy)).fetchall()
        if not rows:
            return None
        job, write, rest_until = decide(rows, total, lifetime_s, now, policy)
        if write is Write.LAPSE:
            db.execute(R["reservation_lapse"], (rest_until, pilot_id))
        elif write is Write.BEGIN and job is not None:
            db.execute(R["reservation_clear"], (pilot_id,))
            db.execute(R["reservation_take_over"], (job.job_id, now - policy.max_hold_s, policy.max_hold_s))
            if db.execute(R["reservation_insert"], (pilot_id, job.job_id, now)).fetchone() is None:
                return None
        return job

    async def reservations(self, now: float) -> list[tuple[int, int, float]]:
        """The holds in force: (pilot, job, since), by pilot."""
        policy = self.reservation
        if policy is None:
            return []
        cutoff = now - policy.max_hold_s

        def read(db: sqlite3.Connection) -> list[tuple[int, int, float]]:
            return [(int(p), int(j), float(t)) for p, j, t in db.execute(R["reservations_live"], (cutoff,))]

        return await self._read(read, self._conn)
