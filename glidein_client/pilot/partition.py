"""Split a pilot's slots (cpus) and GPUs among its jobs: pure bookkeeping and decisions, no I/O.

A pilot offers ``slots`` numbered ``0 .. slots-1``. Each job gets as many slots as it asked
for cpus, preferably a contiguous run of ids, so that :func:`cores_for` maps it onto
neighbouring physical cores. A pilot may offer more slots than it has cores
(oversubscription); slot ``i`` then shares core ``core_ids[i % len(core_ids)]``.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, TypeVar

from glidein_client.wire.schema import Outcome

T = TypeVar("T")
_DONE, _INTERRUPTED = Outcome.DONE, Outcome.INTERRUPTED  # read once: a lookup on the enum class is slow


class Allocation(NamedTuple):
    """What one job holds: slot ids (ascending) and GPU ids (in the pool's order)."""

    slots: tuple[int, ...]
    gpus: tuple[str, ...]


class SlotPool:
    """Free and allocated slots and GPUs of one pilot.

    ``allocate`` answers ``None`` when not enough is free; it never hands a slot or GPU to two
    live allocations. Slots go to the smallest contiguous run of free ids that fits (best fit,
    lowest ids on ties), else to the lowest free ids (:func:`pick_slots`).

    ``total_slots``, ``total_gpus``, ``free_slots`` and ``free_gpus`` are read, never set, by users
    (plain attributes: a pilot and the simulator read them at every claim).
    """

    __slots__ = ("_free_mask", "_gpu_free", "_gpu_ids", "_live", "free_gpus", "free_slots", "total_gpus", "total_slots")

    def __init__(self, slots: int, gpu_ids: Sequence[str]) -> None:
        if slots < 0:
            raise ValueError(f"A pilot cannot offer {slots} slots; give zero or more.")
        if len(set(gpu_ids)) != len(gpu_ids):
            raise ValueError(f"GPU ids must be unique, got {list(gpu_ids)}.")
        self._free_mask = (1 << slots) - 1  # bit i set: slot i is free
        self._gpu_ids = tuple(gpu_ids)
        self._gpu_free = dict.fromkeys(self._gpu_ids, True)
        self._live: dict[Allocation, int] = {}  # live allocations -> how many (an empty one may be live twice)
        self.total_slots = self.free_slots = slots
        self.total_gpus = self.free_gpus = len(self._gpu_ids)

    def allocate(self, cpus: int, gpus: int) -> Allocation | None:
        """Take ``cpus`` slots and ``gpus`` GPUs, or answer ``None`` if not enough are free."""
        if cpus < 0 or gpus < 0:
            raise ValueError(f"Cannot allocate {cpus} cpus and {gpus} GPUs; ask for zero or more.")
        if cpus > self.free_slots or gpus > self.free_gpus:
            return None
        alloc, bits = _pick(self._free_mask, cpus)
        self._free_mask ^= bits
        self.free_slots -= cpus
        if gpus:
            chosen_gpus = tuple(g for g in self._gpu_ids if self._gpu_free[g])[:gpus]
            for g in chosen_gpus:
                self._gpu_free[g] = False
            self.free_gpus -= gpus
            alloc = Allocation(alloc.slots, chosen_gpus)
        live = self._live
        if cpus or gpus:  # its slots and GPUs were free: no equal allocation is live
            live[alloc] = 1
        else:  # an empty one may be live many times
            live[alloc] = live.get(alloc, 0) + 1
        return alloc

    def release(self, alloc: Allocation) -> None:
        """Give back an allocation; one that is not live (never made, or released) is a ValueError."""
        live = self._live.pop(alloc, 0)
        if live <= 0:
            raise ValueError(f"{alloc} is not allocated from this pool; it was released already or never made.")
        if live > 1:
            self._live[alloc] = live - 1
        slots, gpus = alloc
        self._free_mask |= _mask_of(slots)
        self.free_slots += len(slots)
        if gpus:
            for g in gpus:
                self._gpu_free[g] = True
            self.free_gpus += len(gpus)


def pick_slots(free_mask: int, cpus: int) -> tuple[int, ...]:
    """The slots a job of ``cpus`` gets from the free ones (bit ``i`` of ``free_mask`` set: slot ``i`` is
    free): the smallest contiguous run of free ids that fits (lowest ids on ties), else the lowest free ids.
    The caller checks that enough are free."""
    if cpus <= 0:
        return ()
    best_start, best_len = -1, 0
    i, rest = 0, free_mask
    while rest:  # one pass over the runs of free ids, lowest first
        skip = (rest & -rest).bit_length() - 1  # free ids start here...
        rest >>= skip
        i += skip
        length = (~rest & (rest + 1)).bit_length() - 1  # ...and run this long
        if length >= cpus and (best_start < 0 or length < best_len):
            best_start, best_len = i, length
            if length == cpus:
                break
        rest >>= length
        i += length
    if best_start >= 0:
        return tuple(range(best_start, best_start + cpus))
    return tuple([i for i in range(free_mask.bit_length()) if free_mask >> i & 1][:cpus])


@lru_cache(maxsize=4096)
def _pick(free_mask: int, cpus: int) -> tuple[Allocation, int]:
    """:func:`pick_slots` as an allocation without GPUs, and the bits of its slots (a pool holds few
    distinct free sets, so each is worked out once)."""
    slots = pick_slots(free_mask, cpus)
    return Allocation(slots, ()), _mask_of(slots)


@lru_cache(maxsize=4096)
def _mask_of(slots: tuple[int, ...]) -> int:
    mask = 0
    for s in slots:
        mask |= 1 << s
    return mask


def cores_for(slots: Iterable[int], core_ids: Sequence[int]) -> frozenset[int]:
    """The physical cores that run these slots: slot ``i`` runs on ``core_ids[i % len(core_ids)]``."""
    if not core_ids:
        raise ValueError("No cores to map slots onto; the pilot needs at least one core.")
    n = len(core_ids)
    return frozenset(core_ids[s % n] for s in slots)


# --- which claimed jobs start, and when a node is a black hole ------------------------------------


@dataclass(frozen=True)
class Need:
    """What a claimed job asks of its pilot."""

    cpus: int
    memory_mb: int
    gpus: int
    disk_mb: int
    walltime_s: int


def plan_starts(
    waiting: Sequence[Need], free_slots: int, free_gpus: int, memory_mb: int, disk_mb: int, left_s: float
) -> tuple[list[int], list[int]]:
    """Which claimed jobs start now and which go back to the queue, as indices into ``waiting``.

    Jobs are taken in their order while a slot is free; one that would not finish within
    ``left_s`` (the pilot's remaining lifetime) goes back; one that does not fit what is free
    now waits for the next call.
    """
    start: list[int] = []
    give_back: list[int] = []
    for i, need in enumerate(waiting):
        if free_slots <= 0:
            break
        if need.walltime_s > left_s:
            give_back.append(i)
            continue
        if need.memory_mb > memory_mb or need.disk_mb > disk_mb or need.cpus > free_slots or need.gpus > free_gpus:
            continue
        start.append(i)
        free_slots -= need.cpus
        free_gpus -= need.gpus
        memory_mb -= need.memory_mb
        disk_mb -= need.disk_mb
    return start, give_back


def plan_starts_by_shape(
    queues: Iterable[tuple[Need, Iterator[tuple[int, T]]]],
    free_slots: int,
    free_gpus: int,
    memory_mb: int,
    disk_mb: int,
    left_s: float,
) -> tuple[list[T], list[T]]:
    """:func:`plan_starts` over jobs grouped by what they need, at a cost set by the jobs it starts or
    gives back and the number of shapes, not by how many wait.

    Each queue holds the jobs of one shape as ``(position, job)`` with ascending positions (their
    place in the one waiting order). The answer is the same as :func:`plan_starts` on the jobs in
    position order: it walks them merged by position, and drops a whole shape at its first job that
    does not fit, since what is free only shrinks as it goes.
    """
    heads: list[tuple[int, int, Need, T, Iterator[tuple[int, T]]]] = []
    for n, (need, jobs) in enumerate(queues):
        first = next(jobs, None)
        if first is not None:
            heads.append((first[0], n, need, first[1], jobs))
    heapq.heapify(heads)
    start: list[T] = []
    give_back: list[T] = []
    while heads and free_slots > 0:
        _, n, need, job, jobs = heapq.heappop(heads)
        if need.walltime_s > left_s:
            give_back.append(job)
        elif need.memory_mb > memory_mb or need.disk_mb > disk_mb or need.cpus > free_slots or need.gpus > free_gpus:
            continue  # neither this job nor any later one of its shape fits this time
        else:
            start.append(job)
            free_slots -= need.cpus
            free_gpus -= need.gpus
            memory_mb -= need.memory_mb
            disk_mb -= need.disk_mb
        following = next(jobs, None)
        if following is not None:
            heapq.heappush(heads, (following[0], n, need, following[1], jobs))
    return start, give_back


def failure_streak(streak: int, outcome: Outcome, wall_s: float, fast_failure_s: float) -> int:
    """Jobs in a row that the node failed within ``fast_failure_s``, after one more ended.

    Only the pilot's own failures count (``INTERRUPTED``: its scratch failed, it could not start
    the process, the job's directory vanished). A job's own failure (non-zero exit, a missing
    command, kills for memory or walltime) says nothing about the node and leaves the count as it
    is; a success resets it. A pilot whose streak reaches its ``black_hole_failures`` stops taking
    work: the node, not the jobs, is likely broken.
    """
    if outcome is _DONE:
        return 0
    if outcome is _INTERRUPTED and wall_s < fast_failure_s:
        return streak + 1
    return streak
