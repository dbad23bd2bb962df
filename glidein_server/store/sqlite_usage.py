"""Usage and provenance of attempts in the SQLite store: what each attempt used and where it ran."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from glidein_client.wire.schema import AttemptView, Finish, OutputFile, Provenance, Usage
from glidein_server.store.sqlite_base import Q

_provenance = msgspec.json.Decoder(Provenance)


def add_columns(db: sqlite3.Connection, table: str, block: str) -> None:
    """Add the columns of ``block`` (one definition a line) that an older database's ``table`` lacks."""
    have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for column in block.splitlines():
        if column.strip() and not column.startswith("--") and column.split()[0] not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def provenance_columns(fin: Finish | None) -> tuple[float | None, bytes | None]:
    """The ``cpu_s`` and ``provenance`` columns of an ended attempt (NULL from pilots that send none)."""
    if fin is None or fin.provenance is None:
        return None, None
    p = fin.provenance
    return p.cpu_user_s + p.cpu_system_s, msgspec.json.encode(p)


def efficiency(cpu_s: float | None, wall_s: float | None, cpus: int | None) -> float | None:
    """CPU time over wall time scaled by cores: within [0, 1] unless the job ran beyond its cores."""
    if cpu_s is None or not wall_s or not cpus:
        return None
    return round(cpu_s / (wall_s * cpus), 4)


def attempt_views(db: sqlite3.Connection, job_id: int) -> list[AttemptView]:
    out = []
    for row in db.execute(Q["attempts_of_job"], (job_id,)).fetchall():
        outputs = [OutputFile(name=n, sha256=h, size=s) for n, h, s in db.execute(Q["outputs_of_attempt"], (row[0],))]
        out.append(attempt_view(row, outputs))
    return out


def attempt_view(row: Sequence[Any], outputs: list[OutputFile]) -> AttemptView:
    cpus, wall_s, max_rss_mb, cpu_s, prov = row[11:16]
    return AttemptView(
        id=row[0],
        pilot_id=row[1],
        site=row[2],
        outcome=row[3],
        exit_code=row[4],
        reason=row[5],
        claimed_at=row[6],
        started_at=row[7],
        finished_at=row[8],
        stdout_tail=row[9],
        stderr_tail=row[10],
        cpus=cpus,
        wall_s=wall_s,
        max_rss_mb=max_rss_mb,
        cpu_s=cpu_s,
        cpu_efficiency=efficiency(cpu_s, wall_s, cpus),
        outputs=outputs,
        provenance=_provenance.decode(prov) if prov else None,
    )


def result_usage(db: sqlite3.Connection, attempt_id: int, cpus: int) -> Usage | None:
    row = db.execute(Q["attempt_usage"], (attempt_id,)).fetchone()
    if row is None:
        return None
    wall_s, max_rss_mb, cpu_s, prov = row
    return Usage(
        attempt_id=attempt_id,
        cpus=cpus,
        wall_s=wall_s,
        max_rss_mb=max_rss_mb,
        cpu_s=cpu_s,
        cpu_efficiency=efficiency(cpu_s, wall_s, cpus),
        provenance=_provenance.decode(prov) if prov else None,
    )
