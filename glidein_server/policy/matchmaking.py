"""Which idle jobs a pilot gets: a pure function over candidates and free resources.

Candidates arrive in priority order, multicore before single-core at equal priority,
so a pilot fills its big holes first and does not fragment. First, jobs that fit what is
free now; then, if the pilot asks for a backlog (``want``), up to that many more jobs that
fit the pilot's whole capacity, so short jobs start without waiting for a round trip.
Every chosen job fits the pilot's remaining lifetime.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    job_id: int
    cpus: int
    memory_mb: int
    gpus: int
    disk_mb: int
    walltime_s: int


@dataclass(frozen=True)
class Capacity:
    cpus: int
    memory_mb: int
    gpus: int
    disk_mb: int


def select(
    candidates: Iterable[Candidate],
    free: Capacity,
    total: Capacity,
    lifetime_s: float,
    want: int,
    limit: int = 1000,
) -> list[int]:
    cpus, mem, gpus, disk = free.cpus, free.memory_mb, free.gpus, free.disk_mb
    chosen: list[int] = []
    backlog: list[int] = []
    for c in candidates:
        if len(chosen) + len(backlog) >= limit:
            break
        if c.walltime_s > lifetime_s:
            continue
        if c.cpus <= cpus and c.memory_mb <= mem and c.gpus <= gpus and c.disk_mb <= disk:
            chosen.append(c.job_id)
            cpus -= c.cpus
            mem -= c.memory_mb
            gpus -= c.gpus
            disk -= c.disk_mb
        elif (
            len(backlog) < want
            and c.cpus <= total.cpus
            and c.memory_mb <= total.memory_mb
            and c.gpus <= total.gpus
            and c.disk_mb <= total.disk_mb
        ):
            backlog.append(c.job_id)
        if len(backlog) >= want and cpus <= 0:
            break
    return chosen + backlog
