"""The simulated server's idle jobs: kept per job shape, handed out in the store's claim order.

The store answers a claim with the idle jobs that fit the pilot's free resources and remaining
lifetime, in :func:`~glidein_server.policy.matchmaking.claim_order`. Here jobs of one shape wait
in one FIFO bucket (oldest id first), so a claim looks at a few buckets, not at every job. A
claim with ``want = 0`` picks at most ``free cpus`` jobs, and jobs of one shape are taken in id
order, so handing out only that many jobs per bucket gives ``select`` the same answer as the
full list (tests/unit/test_sim_queue.py checks this).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from operator import attrgetter

from glidein_client.pilot.partition import Need
from glidein_server.policy import demand as dm
from glidein_server.policy.matchmaking import Candidate, claim_order
from glidein_server.policy.reservation import Waiting

#: A bucket of identical jobs: (priority, cpus, memory_mb, gpus, disk_mb, walltime_s, sites).
ShapeKey = tuple[int, int, int, int, int, int, frozenset[str] | None]


class Job:
    __slots__ = ("cand", "first_start", "id", "idle_since", "key", "need", "retries", "runtime_s", "submit_t", "work")

    def __init__(self, cand: Candidate, work: int, key: ShapeKey, need: Need, runtime_s: float, now: float) -> None:
        self.id = cand.job_id
        self.cand = cand
        self.work = work
        self.key = key  # (priority, cpus, memory_mb, gpus, disk_mb, walltime_s, sites)
        self.need = need  # what the pilot is asked for: one object per shape, as the pilot would build per claim
        self.runtime_s = runtime_s
        self.submit_t = now
        self.idle_since = now
        self.first_start = -1.0
        self.retries = 0

    @property
    def priority(self) -> int:
        return self.key[0]

    @property
    def sites(self) -> frozenset[str] | None:
        return self.key[6]


class MulticoreWaiting:
    """:meth:`IdleQueue.waiting_multicore`, read only when iterated (most claims never look)."""

    __slots__ = ("queue", "site")

    def __init__(self, queue: IdleQueue, site: str) -> None:
        self.queue, self.site = queue, site

    def __iter__(self) -> Iterator[Waiting]:
        return iter(self.queue.waiting_multicore(self.site))


_cand = attrgetter("cand")


def _order(job: Job) -> tuple[int, int, int]:
    return claim_order(job.key[0], job.key[1], job.id)


class IdleQueue:
    __slots__ = ("_buckets", "by_work", "count", "multicore")

    def __init__(self, works: int) -> None:
        self._buckets: dict[ShapeKey, deque[Job]] = {}
        self.count = 0
        self.multicore = 0  # idle jobs of more than one cpu (no reservation can start without one)
        self.by_work = [0] * works  # idle jobs of each workload

    def __len__(self) -> int:
        return self.count

    def add(self, job: Job, now: float) -> bool:
        """Queue a job (a requeued one goes back to its place by id); True when its shape was new."""
        job.idle_since = now
        key = job.key
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = deque()
        new = not bucket
        if bucket and job.id < bucket[-1].id:
            i = 0
            while bucket[i].id < job.id:
                i += 1
            bucket.insert(i, job)
        else:
            bucket.append(job)
        self.count += 1
        if key[1] > 1:
            self.multicore += 1
        self.by_work[job.work] += 1
        return new

    def take(self, job: Job) -> None:
        key = job.key
        bucket = self._buckets[key]
        if bucket[0] is job:
            bucket.popleft()
        else:
            bucket.remove(job)
        self.count -= 1
        if key[1] > 1:
            self.multicore -= 1
        self.by_work[job.work] -= 1

    def _open(self, site: str) -> Iterator[tuple[ShapeKey, deque[Job]]]:
        for key, bucket in self._buckets.items():
            if bucket and (key[6] is None or site in key[6]):
                yield key, bucket

    def candidates(self, site: str, cpus: int, mem: int, gpus: int, disk: int, lifetime_s: float) -> list[Candidate]:
        """The jobs a claim of this much free capacity could get, in claim order (at most ``cpus`` per shape)."""
        life = int(lifetime_s)
        out: list[Job] = []
        for key, bucket in self._buckets.items():
            if not bucket or key[1] > cpus or key[5] > life or key[2] > mem or key[3] > gpus or key[4] > disk:
                continue
            if key[6] is not None and site not in key[6]:
                continue
            if cpus == 1 or len(bucket) == 1:
                out.append(bucket[0])
            else:
                out.extend(bucket[i] for i in range(min(cpus, len(bucket))))
        if len(out) == 1:
            return [out[0].cand]
        out.sort(key=_order)
        return list(map(_cand, out))

    def too_long(self, site: str, lifetime_s: float) -> bool:
        """Whether an idle job for this site asks for more than ``lifetime_s`` (the store's ``idle_too_long``)."""
        return any(key[5] > lifetime_s for key, _ in self._open(site))

    def waiting_multicore(self, site: str, per_shape: int = 4) -> list[Waiting]:
        """The oldest few idle multicore jobs of each shape, in claim order (for reservations)."""
        jobs: list[Job] = []
        for key, bucket in self._open(site):
            if key[1] > 1:
                jobs.extend(bucket[i] for i in range(min(per_shape, len(bucket))))
        jobs.sort(key=_order)
        return [Waiting(j.cand, j.idle_since) for j in jobs]

    def shapes(self) -> list[dm.Shape]:
        """Idle counts per shape, as the store's running aggregates give them to the demand."""
        return [dm.Shape(k[1], k[2], k[3], k[4], k[5], k[6], len(b)) for k, b in self._buckets.items() if b]
