"""The claim's candidate scan, bounded by job shape rather than by queue length.

Idle jobs are indexed by (owner, shape, priority, id), where a shape is (cpus, memory, GPUs, disk,
walltime, sites). A claim reads the shapes that have idle jobs (a small running aggregate), keeps
those that fit the pilot, reads each fitting shape's best few jobs with one index seek, and merges
them in claim order. The result is the same set the plain scan "every fitting idle job in claim
order, first N" gives, but a pilot with room for one small job no longer walks past every large
job queued before it: the work grows with the number of shapes, not of jobs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from glidein_server.policy.matchmaking import Candidate, Capacity, claim_order

#: (cpus, memory_mb, gpus, disk_mb, walltime_s, sites key) of idle jobs
Shape = tuple[int, int, int, int, int, str]


def fitting(
    shapes: Iterable[Any],
    cpus: int,
    memory_mb: int,
    gpus: int,
    disk_mb: int,
    lifetime_s: float,
    site: str,
) -> list[Shape]:
    """The shapes (first six columns of each row) that fit the capacity, the lifetime and the site."""
    key = f",{site},"
    out: list[Shape] = []
    for row in shapes:
        c, m, g, d, w, s = (int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]), str(row[5]))
        if c <= cpus and m <= memory_mb and g <= gpus and d <= disk_mb and w <= lifetime_s and (not s or key in s):
            out.append((c, m, g, d, w, s))
    return out


def per_shape(shape: Shape, cpus: int, memory_mb: int, gpus: int, disk_mb: int, want: int, most: int) -> int:
    """How many of one shape's best jobs a claim can use (at most ``most``): as many as fit what is
    free, plus the backlog (``want``). Jobs of one shape differ only in priority and age, and come in
    that order; once one does not fit, none after it does, so matchmaking never takes one further
    down (unless a reservation holds cores back, which the caller handles by reading ``most``)."""
    n = most
    for need, have in ((shape[0], cpus), (shape[1], memory_mb), (shape[2], gpus), (shape[3], disk_mb)):
        if need > 0:
            n = min(n, have // need + want)
    return max(n, 0)


def best(rows: Iterable[Any], limit: int) -> list[tuple[int, int, int, int, int, int]]:
    """The first ``limit`` rows (id, cpus, memory_mb, gpus, disk_mb, walltime_s, priority) in claim order
    (priority, then more cores, then oldest), without the priority."""
    ordered = sorted(rows, key=lambda r: claim_order(r[6], r[1], r[0]))[:limit]
    return [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in ordered]


#: Each user's candidates by size (cpus, memory, GPUs, disk, walltime), each with its place in
#: the user's claim order, each size's in that order.
Pool = dict[str, dict[tuple[int, ...], list[tuple[int, Candidate]]]]


def pool_of(queues: dict[str, list[Candidate]]) -> Pool:
    """Candidates for several pilots (each user's in claim order), grouped by size."""
    pool: Pool = {}
    for owner, queue in queues.items():
        sizes = pool.setdefault(owner, {})
        for place, c in enumerate(queue):
            sizes.setdefault(tuple(c[1:]), []).append((place, c))
    return pool


def offer(pool: Pool, taken: set[int], cap: Capacity, lifetime_s: float, most: int) -> dict[str, list[Candidate]]:
    """What one pilot of several claiming together is offered: each user's candidates not yet
    ``taken`` that fit ``cap`` and the lifetime, at most ``most`` of each size (what the pilot's
    own scan would have read), in claim order. Jobs of one size come in claim order and are
    interchangeable to matchmaking, so a pilot that cannot use the first ``most`` of a size cannot
    use any of it; each size is checked once, not each job."""
    out: dict[str, list[Candidate]] = {}
    for owner, sizes in pool.items():
        mine: list[tuple[int, Candidate]] = []
        for queue in sizes.values():
            first = queue[0][1]
            if not fits(first, cap, lifetime_s):
                continue
            n = 0
            for entry in queue:
                if entry[1].job_id not in taken:
                    mine.append(entry)
                    n += 1
                    if n == most:
                        break
        if mine:
            mine.sort()
            out[owner] = [c for _, c in mine]
    return out


def fits(c: Candidate, cap: Capacity, lifetime_s: float) -> bool:
    """Whether a candidate fits ``cap`` and the lifetime."""
    return (
        c.cpus <= cap.cpus
        and c.memory_mb <= cap.memory_mb
        and c.gpus <= cap.gpus
        and c.disk_mb <= cap.disk_mb
        and c.walltime_s <= lifetime_s
    )
