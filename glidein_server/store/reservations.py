"""Bounded reservations kept in a store's database: what one claiming sync reads and does.

A claiming pilot's sync reads, in one statement, the pilot's own hold (if any), the first few
idle multicore jobs of each shape that fits the whole pilot (an index seek per shape, never a scan
of the queue) and the owners of the other holds in force (a few rows: at most ``max_per_owner`` per
owner). :func:`decide` turns those rows into the job the pilot holds its free cores for, with the
decisions of :mod:`glidein_server.policy.reservation` (the simulator's), and says what the store
writes: nothing, the end of a hold that ran out, or the start of a new one.

Holds end on their own: a hold whose job is no longer idle (claimed by anyone, cancelled, held),
whose pilot is no longer running, or that is older than ``max_hold_s`` counts for no one, and the
next hold for that job or by that pilot replaces its row. One pilot per job is a unique index on
the job, so two server replicas cannot both reserve one job. The limit per owner is read with the
holds: claims on several replicas at the same moment may each begin one more before they see the
others' (one SQLite server never does).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Any

from glidein_server.policy.matchmaking import Candidate, Capacity, claim_order
from glidein_server.policy.reservation import ReservationPolicy, Waiting, keeps, rests_until, starving

#: What a store does unless told otherwise: the server's defaults (the simulator's seed scenario's).
DEFAULT_POLICY = ReservationPolicy()
#: Idle multicore jobs read per shape: the oldest few, as the simulator looks at them.
PER_SHAPE = 4


class Gate:
    """Whether a claim needs to read reservations at all, so that claims pay for them only while a
    multicore job may be starving.

    Every ``ttl_s`` one query (:meth:`refresh`) reads whether any hold is in force and when the
    oldest of the idle multicore jobs a claim would look at was submitted. While no hold is in
    force, no job can begin to starve before that one has waited ``after_s``: until then (or the
    next refresh) claims skip the read. A job that newly comes to the front of its shape is seen
    at the next refresh, at most ``ttl_s`` late.
    """

    def __init__(self, policy: ReservationPolicy) -> None:
        self.policy = policy
        self.ttl_s = min(30.0, policy.after_s / 4)
        self.after_s = policy.after_s
        self.until = 0.0  # refresh when this time has come
        self.open_at = 0.0  # claims read reservations from this time on

    def due(self, now: float) -> bool:
        return now >= self.until

    def refresh(self, now: float, holds: int, oldest: float | None) -> None:
        self.until = now + self.ttl_s
        self.open_at = now if holds else (float("inf") if oldest is None else oldest + self.after_s)

    def open(self, now: float) -> bool:
        return now >= self.open_at


def gate_for(gate: Gate | None, policy: ReservationPolicy) -> Gate:
    """A store's gate for ``policy``: the one it has, or a new one when there is none or the policy changed."""
    return gate if gate is not None and gate.policy == policy else Gate(policy)


class Write(Enum):
    NONE = "none"  # nothing changes
    LAPSE = "lapse"  # the hold ran out: the pilot rests (rest_until) before it may hold again
    BEGIN = "begin"  # a new hold begins (unless another pilot took that job first)


def sql(blocks: dict[str, str]) -> dict[str, str]:
    """The named SQL blocks with ``{per_shape}`` written in: a constant, not a parameter, so that
    PostgreSQL plans the statement once (with a parameter it planned it again at every claim)."""
    return {name: text.replace("{per_shape}", str(PER_SHAPE)) for name, text in blocks.items()}


def gate_args(now: float, policy: ReservationPolicy) -> tuple[Any, ...]:
    """The arguments of the ``reservation_gate`` statement (the same order in both backends)."""
    return (now - policy.max_hold_s,)


def read_args(
    pilot_id: int, site: str, total: Capacity, lifetime_s: float, now: float, policy: ReservationPolicy
) -> tuple[Any, ...]:
    """The arguments of the ``reservation_read`` statement (the same order in both backends)."""
    return (
        *(pilot_id, now - policy.max_hold_s, total.cpus, total.memory_mb, total.gpus, total.disk_mb),
        *(int(lifetime_s), f",{site},"),
    )


def decide(
    rows: Iterable[Sequence[Any]], total: Capacity, lifetime_s: float, now: float, policy: ReservationPolicy
) -> tuple[Candidate | None, Write, float]:
    """The job to hold for, what to write, and (for a lapse) until when the pilot rests.

    ``rows``: (kind, job id, since, rest until, cpus, memory, gpus, disk, walltime, priority, held,
    owner); kind 0 is the pilot's own hold (its job columns NULL once the job is no longer idle), kind 1
    an idle multicore job (since: its submission; held: another live pilot holds cores for it), kind 2
    a hold in force by another pilot (only its job id and the job's owner count).
    """
    waiting: list[tuple[tuple[int, int, int], Waiting]] = []
    held: set[int] = set()
    holds_by_owner: Counter[str] = Counter()
    for kind, job_id, since, rest_until, cpus, mem, gpus, disk, wall, priority, other, owner in rows:
        if kind == 2:
            holds_by_owner[owner] += 1
            continue
        if kind == 0:
            if job_id is not None and cpus is not None:  # holding for a job that still waits
                job = Candidate(job_id, cpus, mem, gpus, disk, wall)
                if keeps(job, since, lifetime_s, now, policy):
                    return job, Write.NONE, 0.0
                return None, Write.LAPSE, rests_until(now, policy)
            if job_id is None and rest_until > now:  # resting after a hold that ran out
                return None, Write.NONE, 0.0
            continue  # its job was claimed: that hold is over, a new one may begin
        if other:
            held.add(job_id)
        cand = Candidate(job_id, cpus, mem, gpus, disk, wall)
        waiting.append((claim_order(priority, cpus, job_id), Waiting(cand, since, owner)))
    waiting.sort(key=lambda w: w[0])
    found = starving((w for _, w in waiting), held, total, lifetime_s, now, policy, holds_by_owner)
    return (None, Write.NONE, 0.0) if found is None else (found.job, Write.BEGIN, 0.0)
