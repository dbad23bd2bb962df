"""Which idle jobs a pilot gets: a pure function over candidates and free resources.

Candidates arrive in claim order (:func:`claim_order`: priority, then multicore before
single-core, then oldest first), so a pilot fills its big holes first and does not fragment.
First, jobs that fit what is free now; then, if the pilot asks for a backlog (``want``), up to
that many more jobs that fit the pilot's whole capacity, so short jobs start without waiting for
a round trip. Every chosen job fits the pilot's remaining lifetime.

Three rules of :class:`MatchPolicy` refine this (each can be turned off, which gives back the
plain greedy fill; the simulator compares both):

- end-of-life backfill: a pilot in the last ``eol_window_s`` of its life is retiring; it takes
  only candidates that fit its remaining time, ordered by walltime: ``eol_order = "longest"``
  (the default) takes the longest that still fits, so each core's last job ends close to the
  pilot's end; ``"shortest"`` takes the shortest first, which suits a workload with many short
  jobs to backfill with (the simulator measures both);
- GPU first: a pilot with a free GPU takes GPU jobs before CPU-only ones, and keeps the cores
  and memory of the first waiting GPU job free even when that job does not fit yet;
- reservation: a pilot given a job to hold for (``reserve``, chosen by
  :mod:`glidein_server.policy.reservation`) lets other jobs use only what that job leaves free,
  so its cores gather as single-core jobs end.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain
from typing import Literal, NamedTuple

from glidein_server.policy.endoflife import plan_order


class Candidate(NamedTuple):
    job_id: int
    cpus: int
    memory_mb: int
    gpus: int
    disk_mb: int
    walltime_s: int


class Capacity(NamedTuple):
    cpus: int
    memory_mb: int
    gpus: int
    disk_mb: int


EolOrder = Literal["longest", "shortest"]


@dataclass(frozen=True)
class MatchPolicy:
    eol_window_s: float = 6 * 3600.0  # 0: no end-of-life backfill
    eol_order: EolOrder = "longest"
    gpu_first: bool = True
    eol_align: bool = True  # a retiring pilot plans its cores' last jobs (endoflife.plan_order)
    eol_leave: bool = True  # a retiring pilot that holds no job and got none leaves at once


#: What the server uses, and the plain greedy fill (every rule off) for comparison.
DEFAULT_POLICY = MatchPolicy()
PLAIN_POLICY = MatchPolicy(eol_window_s=0.0, gpu_first=False, eol_align=False, eol_leave=False)
#: End-of-life backfill without lining the cores' ends up (the server's rules before that).
BACKFILL_POLICY = MatchPolicy(eol_window_s=3 * 3600.0, eol_align=False, eol_leave=False)


def claim_order(priority: int, cpus: int, job_id: int) -> tuple[int, int, int]:
    """Sort key of one user's idle jobs for a claim: higher priority, then more cpus, then older (lower id).

    The store reads each user's best jobs of each fitting shape and merges them by this key
    (:mod:`glidein_server.store.candidates`); between users :func:`glidein_server.policy.fairshare.fair_order` decides.
    """
    return (-priority, -cpus, job_id)


def _fits(c: Candidate, cpus: int, mem: int, gpus: int, disk: int) -> bool:
    return c.cpus <= cpus and c.memory_mb <= mem and c.gpus <= gpus and c.disk_mb <= disk


def _gpu_first(candidates: Iterable[Candidate], free: Capacity) -> tuple[Iterable[Candidate], Candidate | None]:
    """GPU jobs before CPU-only ones, and the first GPU job to keep room for (None when none waits)."""
    if free.gpus <= 0:
        return candidates, None
    cands = list(candidates)
    gpu = [c for c in cands if c.gpus > 0]
    if not gpu:
        return cands, None
    return chain(gpu, (c for c in cands if c.gpus == 0)), gpu[0]


def retiring(lifetime_s: float, policy: MatchPolicy = DEFAULT_POLICY) -> bool:
    """Whether a pilot with this much life left takes its work shortest first."""
    return lifetime_s < policy.eol_window_s


def leaves(lifetime_s: float, claimed: int, policy: MatchPolicy = DEFAULT_POLICY) -> bool:
    """Whether a pilot that holds no job leaves now instead of waiting for work: it is retiring
    and its claim came back empty, so what could still fit its last hours is not there."""
    return policy.eol_leave and claimed == 0 and retiring(lifetime_s, policy)


def select(
    candidates: Iterable[Candidate],
    free: Capacity,
    total: Capacity,
    lifetime_s: float,
    want: int,
    limit: int = 1000,
    *,
    policy: MatchPolicy = DEFAULT_POLICY,
    reserve: Candidate | None = None,
    runtime_ratio: float = 1.0,
) -> list[int]:
    """The ids of the jobs this pilot gets, in the order it should start them.

    ``runtime_ratio`` is how much of their walltime jobs use (:func:`endoflife.runtime_ratio`);
    a retiring pilot plans its cores' last jobs with it when ``policy.eol_align`` is on.
    """
    if lifetime_s >= policy.eol_window_s:  # not retiring
        return _fill(candidates, free, total, lifetime_s, want, limit, policy, reserve)
    cands = [c for c in candidates if c.walltime_s <= lifetime_s]
    if policy.eol_align and len(cands) > 1:
        keys = plan_order(lifetime_s, (c.walltime_s for c in cands), runtime_ratio)
        cands.sort(key=lambda c: keys[c.walltime_s])
    else:
        sign = -1 if policy.eol_order == "longest" else 1
        cands.sort(key=lambda c: sign * c.walltime_s)
    return _fill(cands, free, total, lifetime_s, want, limit, policy, reserve)


def _fill(
    candidates: Iterable[Candidate],
    free: Capacity,
    total: Capacity,
    lifetime_s: float,
    want: int,
    limit: int,
    policy: MatchPolicy,
    reserve: Candidate | None,
) -> list[int]:
    cpus, mem, gpus, disk = free.cpus, free.memory_mb, free.gpus, free.disk_mb
    hold = reserve
    if policy.gpu_first and gpus > 0:
        candidates, gpu_hold = _gpu_first(candidates, free)
        hold = gpu_hold or hold
    chosen: list[int] = []
    backlog: list[int] = []
    for c in candidates:
        if len(chosen) + len(backlog) >= limit:
            break
        if c.walltime_s > lifetime_s:
            continue
        mine = hold is not None and (c.job_id == hold.job_id or (hold.gpus > 0 and c.gpus > 0))
        if hold is None or mine:  # the held-for job (or another GPU job) may use everything
            fits = c.cpus <= cpus and c.memory_mb <= mem and c.gpus <= gpus and c.disk_mb <= disk
        else:
            fits = _fits(c, cpus - hold.cpus, mem - hold.memory_mb, gpus - hold.gpus, disk - hold.disk_mb)
        if fits:
            chosen.append(c.job_id)
            cpus -= c.cpus
            mem -= c.memory_mb
            gpus -= c.gpus
            disk -= c.disk_mb
            if mine:
                hold = None
        elif len(backlog) < want and _fits(c, total.cpus, total.memory_mb, total.gpus, total.disk_mb):
            backlog.append(c.job_id)
        if cpus <= 0 and len(backlog) >= want:
            break
    return chosen + backlog
