"""The pilot's local backlog: claimed jobs waiting for a free slot, with their summed needs.

The sums are kept as jobs come and go, so asking "what is free once the backlog has started"
costs the same with 3 waiting jobs as with 10,000. Jobs are also kept by shape (what they need),
so choosing which start when a slot frees (:meth:`Backlog.plan`) costs what it starts and the
number of shapes, not a walk over every waiting job; taking one job out by its attempt costs
the same however many wait.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator

from glidein_client.pilot.partition import Need, plan_starts_by_shape
from glidein_client.wire.schema import ClaimedJob


def need_of(claim: ClaimedJob) -> Need:
    s = claim.spec
    return Need(s.cpus, s.memory_mb, s.gpus, s.disk_mb, s.walltime_s)


class Backlog:
    def __init__(self) -> None:
        self._jobs: OrderedDict[int, tuple[int, Need, ClaimedJob]] = OrderedDict()  # by attempt, in arrival order
        self._shapes: dict[Need, OrderedDict[int, ClaimedJob]] = {}  # arrival number -> job, per shape
        self._arrivals = 0
        self.cpus = 0
        self.memory_mb = 0
        self.gpus = 0
        self.disk_mb = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[ClaimedJob]:
        return (claim for _, _, claim in self._jobs.values())

    def _count(self, claim: ClaimedJob, sign: int) -> None:
        spec = claim.spec
        self.cpus += sign * spec.cpus
        self.memory_mb += sign * spec.memory_mb
        self.gpus += sign * spec.gpus
        self.disk_mb += sign * spec.disk_mb

    def extend(self, claims: Iterable[ClaimedJob]) -> None:
        """Add jobs at the end, in their order (a job already waiting here is not added twice)."""
        for claim in claims:
            if claim.attempt_id in self._jobs:
                continue
            need = need_of(claim)
            self._jobs[claim.attempt_id] = (self._arrivals, need, claim)
            self._shapes.setdefault(need, OrderedDict())[self._arrivals] = claim
            self._arrivals += 1
            self._count(claim, 1)

    def popleft(self) -> ClaimedJob:
        attempt_id = next(iter(self._jobs))
        claim = self.take(attempt_id)
        assert claim is not None
        return claim

    def take(self, attempt_id: int) -> ClaimedJob | None:
        """Remove and return the job of that attempt, if it waits here."""
        entry = self._jobs.pop(attempt_id, None)
        if entry is None:
            return None
        arrival, need, claim = entry
        shape = self._shapes[need]
        del shape[arrival]
        if not shape:
            del self._shapes[need]
        self._count(claim, -1)
        return claim

    def plan(
        self, free_slots: int, free_gpus: int, memory_mb: int, disk_mb: int, left_s: float
    ) -> tuple[list[ClaimedJob], list[ClaimedJob]]:
        """Which waiting jobs start now and which cannot finish in ``left_s``, in the order and by
        the rules of :func:`~glidein_client.pilot.partition.plan_starts`; the jobs stay here."""
        queues = ((need, iter(shape.items())) for need, shape in self._shapes.items())
        return plan_starts_by_shape(queues, free_slots, free_gpus, memory_mb, disk_mb, left_s)
