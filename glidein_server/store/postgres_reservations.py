"""Bounded reservations in the PostgreSQL store: the pilot a starving multicore job gets.

One statement per claiming sync reads the pilot's hold and the multicore jobs that may be starving
(:mod:`glidein_server.store.reservations` decides); a hold is written only when one begins or runs
out. Replicas agree through the unique index on the held job: of two pilots reserving one job at
once, on any replicas, the second inserts nothing and holds nothing. Its SQL is in
sql/postgres_reservations.sql.
"""

from __future__ import annotations

from glidein_server.policy.matchmaking import Candidate, Capacity
from glidein_server.policy.reservation import ReservationPolicy
from glidein_server.store import sqlfile
from glidein_server.store.postgres_base import Connection, PostgresBase
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

R = sql(sqlfile.load("postgres_reservations.sql"))


class PostgresReservations(PostgresBase):
    #: None: no reservations (the server's ``reservation_after_s = 0``).
    reservation: ReservationPolicy | None = DEFAULT_POLICY
    _reservation_gate: Gate | None = None

    async def _reserve(
        self, con: Connection, pilot_id: int, site: str, total: Capacity, lifetime_s: float, now: float
    ) -> Candidate | None:
        """The job this claiming pilot holds its free cores for, or None (inside the claim's transaction)."""
        policy = self.reservation
        if policy is None:
            return None
        gate = self._reservation_gate = gate_for(self._reservation_gate, policy)
        if gate.due(now):
            row = await con.fetchrow(R["reservation_gate"], *gate_args(now, policy))
            assert row is not None  # one row, always
            gate.refresh(now, row[0], row[1])
        if not gate.open(now):
            return None
        rows = await con.fetch(R["reservation_read"], *read_args(pilot_id, site, total, lifetime_s, now, policy))
        if not rows:
            return None
        job, write, rest_until = decide((tuple(r) for r in rows), total, lifetime_s, now, policy)
        if write is Write.LAPSE:
            await con.execute(R["reservation_lapse"], rest_until, pilot_id)
        elif write is Write.BEGIN and job is not None:
            await con.execute(R["reservation_clear"], pilot_id)  # first: one lock order for every replica
            await con.execute(R["reservation_take_over"], job.job_id, now - policy.max_hold_s, policy.max_hold_s)
            if await con.fetchval(R["reservation_insert"], pilot_id, job.job_id, now) is None:
                return None  # another pilot, maybe on another replica, reserved it first
        return job

    async def reservations(self, now: float) -> list[tuple[int, int, float]]:
        """The holds in force: (pilot, job, since), by pilot."""
        policy = self.reservation
        if policy is None:
            return []
        rows = await self.pool.fetch(R["reservations_live"], now - policy.max_hold_s)
        return [(int(r[0]), int(r[1]), float(r[2])) for r in rows]
