"""A bounded reservation: one pilot at a time gathers free cores for a starving multicore job.

Single-core jobs that end one by one are refilled at once by other single-core jobs, so a
multicore job may wait until a fresh pilot starts. When a multicore job has waited
``after_s``, one pilot that could run it is asked to hold its free cores for it
(:func:`glidein_server.policy.matchmaking.select` with ``reserve``): other jobs then use only
what that job leaves free. The hold is bounded: at most one pilot per waiting job, at most
``max_hold_s`` long, and a pilot whose hold ran out fills its cores for ``max_hold_s`` before it
may hold again. The cost is the cores held idle; the simulator measures it.

Pure bookkeeping over plain data; the caller says when a job is claimed and when a pilot leaves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from glidein_server.policy.matchmaking import Candidate, Capacity


@dataclass(frozen=True)
class ReservationPolicy:
    after_s: float = 1800.0
    max_hold_s: float = 3600.0


@dataclass(frozen=True)
class Waiting:
    """An idle job and since when it waits to be claimed."""

    job: Candidate
    idle_since: float


@dataclass(frozen=True)
class _Hold:
    job: Candidate
    since: float


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
            if now - hold.since <= self.policy.max_hold_s and hold.job.walltime_s <= lifetime_s:
                return hold.job
            self._drop(pilot_id)
            self._resting[pilot_id] = now + self.policy.max_hold_s
            return None
        if self._resting.get(pilot_id, 0.0) > now:
            return None
        for w in waiting:
            job = w.job
            if now - w.idle_since < self.policy.after_s:
                continue
            if job.job_id in self._holder or job.cpus <= 1 or job.walltime_s > lifetime_s:
                continue
            if job.cpus > total.cpus or job.memory_mb > total.memory_mb or job.gpus > total.gpus:
                continue
            self._by_pilot[pilot_id] = _Hold(job, now)
            self._holder[job.job_id] = pilot_id
            self.made += 1
            return job
        return None

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
