"""A pilot's heartbeat in the PostgreSQL store: one statement, no transaction, nothing else.

A sync that only reports what the pilot has free (no start, no finished attempt, no held list, no
claim) is the commonest call a server answers: every running pilot sends one each ``heartbeat_s``.
It writes the pilot's row, renews its leases when a quarter is spent, and answers the attempts to
stop and whether its site is draining, all in ``pilot_heartbeat``, atomic by itself.
"""

from __future__ import annotations

from glidein_client.wire.errors import ConflictError
from glidein_client.wire.schema import SiteMode, SyncRequest, SyncResponse
from glidein_server.store.postgres_base import Connection, Q
from glidein_server.store.sqlite_pilots import NOTHING_FREE

#: Why a pilot of a draining site is told to leave.
DRAINING_REASON = "its site is draining (the operator's `glidein-server site drain`)"


def only_reports(req: SyncRequest, claims: bool) -> bool:
    """Whether the sync ``req`` is a heartbeat (``claims``: whether it would claim)."""
    return not (req.started or req.finished or req.held is not None or claims)


def not_running(pilot_id: int) -> ConflictError:
    return ConflictError(
        f"Pilot {pilot_id} is not running on the server (it ended or never registered).",
        hint="The pilot should stop; its jobs have been requeued.",
    )


async def heartbeat(con: Connection, pilot_id: int, req: SyncRequest, now: float, lease_s: float) -> SyncResponse:
    f = NOTHING_FREE if req.draining else req.free
    lifetime_s = 0.0 if req.draining else req.lifetime_s
    row = await con.fetchrow(
        Q["pilot_heartbeat"],
        *(f.cpus, f.memory_mb, f.gpus, f.disk_mb, lifetime_s, now, req.occupancy, pilot_id),
        *(now + lease_s, now + 0.75 * lease_s),
    )
    if row is None:
        raise not_running(pilot_id)
    leave = DRAINING_REASON if row[0] == SiteMode.DRAINING.value else None
    return SyncResponse(cancel=row[1], leave=leave)
