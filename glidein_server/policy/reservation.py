"""A bounded reservation: one pilot at a time gathers free cores for a starving multicore job.

Single-core jobs that end one by one are refilled at once by other single-core jobs, so a
multicore job may wait until a fresh pilot starts. When a multicore job has waited
``after_s``, one pilot that could run it is asked to hold its free cores for it
(:func:`glidein_server.policy.matchmaking.select` with ``reserve``): other jobs then use only
what that job leaves free. The hold is bounded: at most one pilot per waiting job, at most
``max_hold_s`` long, a pilot whose hold ran out fills its cores for ``max_hold_s`` before it
may hold again, and at most ``max_per_owner`` pilots hold for one owner's jobs at once (0: no such
limit), so that one user's many large jobs of many shapes cannot keep many pilots' cores idle
while other users' jobs wait. The cost is the cores held idle; the simulator measures it.

Pure bookkeeping over plain data; the caller says when a job is claimed and when a pilot leaves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

from glidein_server.policy.matchmaking import Candidate, Capacity


@dataclass(frozen=True)
class ReservationPolicy:
    after_s: float = 1800.0
    max_hold_s: float = 3600.0
    max_per_owner: int = 4  # pilots holding for one owner's jobs at once; 0: no such limit


@dataclass(frozen=True)
class Waiting:
    """An idle job and since when it waits to be claimed."""

    job: Candidate
    idle_since: float
    owner: str | None = None  # None: not known (the simulator models no users), so not limited per owner


@dataclass(frozen=True)
class _Hold:
    job: Candidate
    since: float
    owner: str | None = None


class Reservations:
    def __init__(self, policy: ReservationPolicy | None = None) -> None:
        self.policy = policy or ReservationPolicy()
        self._by_pilot: dict[int, _Hold] = {}
        self._holder: dict[int, int] = {}  # job id -> pilot id
        self._resting: dict[int, float] = {}  # pilot id -> may hold again from
        self.made = 0  # holds begun so far

    def __len__(self) -> int:
        return len(self._by_pilot)

    def for_pilot(
        self, pilot_id: int, waiting: Iterable[Waiting], total: Capacity, lifetime_s: float, now: float
    ) -> Candidate | None:
        """The job this pilot holds its free cores for, or None.

        ``waiting`` are idle multicore jobs in claim order; only the first few are looked at.
        """
        hold = self._by_pilot.get(pilot_id)
        if hold is not None:
            if keeps(hold.job, hold.since, lifetime_s, now, self.policy):
                return hold.job
            self._drop(pilot_id)
            self._resting[pilot_id] = rests_until(now, self.policy)
            return None
        if self._resting.get(pilot_id, 0.0) > now:
            return None
        owners = Counter(h.owner for h in self._by_pilot.values() if h.owner is not None)
        chosen = starving(waiting, self._holder, total, lifetime_s, now, self.policy, owners)
        if chosen is None:
            return None
        self._by_pilot[pilot_id] = _Hold(chosen.job, now, chosen.owner)
        self._holder[chosen.job.job_id] = pilot_id
        self.made += 1
        return chosen.job

    def holder(self, job_id: int) -> int | None:
        """The pilot holding cores for this job, if any."""
        return self._holder.get(job_id)

    def claimed(self, job_id: int) -> None:
        """A job was claimed (by any pilot): its hold, if any, ends."""
        pilot_id = self._holder.get(job_id)
        if pilot_id is not None:
            self._drop(pilot_id)

    def gone(self, pilot_id: int) -> None:
        """A pilot left: it holds nothing any more."""
        self._drop(pilot_id)
        self._resting.pop(pilot_id, None)

    def _drop(self, pilot_id: int) -> None:
        hold = self._by_pilot.pop(pilot_id, None)
        if hold is not None:
            self._holder.pop(hold.job.job_id, None)


# The decisions themselves, shared by :class:`Reservations` (the simulator) and the server's stores,
# which keep the holds in their database.


def keeps(job: Candidate, since: float, lifetime_s: float, now: float, policy: ReservationPolicy) -> bool:
    """Whether a pilot holding cores for ``job`` since ``since`` goes on holding them."""
    return now - since <= policy.max_hold_s and job.walltime_s <= lifetime_s


def rests_until(now: float, policy: ReservationPolicy) -> float:
    """Until when a pilot whose hold ran out at ``now`` fills its cores before it may hold again."""
    return now + policy.max_hold_s


def owner_may_hold(owner: str, holds_by_owner: Mapping[str, int], policy: ReservationPolicy) -> bool:
    """Whether one more pilot may begin to hold for a job of ``owner``, who has ``holds_by_owner``
    holds in force by other pilots: fewer than ``max_per_owner`` (or no such limit)."""
    return policy.max_per_owner <= 0 or holds_by_owner.get(owner, 0) < policy.max_per_owner


def starving(
    waiting: Iterable[Waiting],
    held: Container[int],
    total: Capacity,
    lifetime_s: float,
    now: float,
    policy: ReservationPolicy,
    holds_by_owner: Mapping[str, int] | None = None,
) -> Waiting | None:
    """The first of ``waiting`` (idle multicore jobs in claim order) that has waited ``after_s``,
    that no other pilot holds cores for (``held``: job ids), whose owner may have one more hold
    (``holds_by_owner``: the holds in force by other pilots, per owner) and that this pilot could
    run (``total``: its whole capacity; ``lifetime_s``: its time left); None when there is none."""
    for w in waiting:
        job = w.job
        if now - w.idle_since < policy.after_s:
            continue
        if job.job_id in held or job.cpus <= 1 or job.walltime_s > lifetime_s:
            continue
        if job.cpus > total.cpus or job.memory_mb > total.memory_mb or job.gpus > total.gpus:
            continue
        if w.owner is not None and not owner_may_hold(w.owner, holds_by_owner or {}, policy):
            continue
        return w
    return None
