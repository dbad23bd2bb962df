from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from glidein_client.pilot.partition import Allocation, SlotPool, cores_for, pick_slots


def test_empty_pool_counts() -> None:
    pool = SlotPool(4, ["0", "1"])
    assert (pool.total_slots, pool.free_slots, pool.free_gpus) == (4, 4, 2)


def test_allocate_lowest_ids_first() -> None:
    pool = SlotPool(8, [])
    assert pool.allocate(2, 0) == Allocation(slots=(0, 1), gpus=())
    assert pool.allocate(3, 0) == Allocation(slots=(2, 3, 4), gpus=())
    assert pool.free_slots == 3


def test_best_fit_prefers_the_smallest_run_that_fits() -> None:
    pool = SlotPool(10, [])
    a = pool.allocate(3, 0)  # 0-2
    b = pool.allocate(2, 0)  # 3-4
    c = pool.allocate(1, 0)  # 5
    assert a and b and c
    pool.release(a)  # free: 0-2 (3 long), 6-9 (4 long)
    got = pool.allocate(3, 0)
    assert got is not None and got.slots == (0, 1, 2)
    pool.release(got)
    pool.release(c)  # free: 0-2 (3), 5-9 (5)
    got = pool.allocate(2, 0)
    assert got is not None and got.slots == (0, 1)


def test_fragmented_pool_falls_back_to_lowest_free_ids() -> None:
    pool = SlotPool(6, [])
    allocs = [pool.allocate(1, 0) for _ in range(6)]
    for i in (0, 2, 4):
        alloc = allocs[i]
        assert alloc is not None
        pool.release(alloc)
    got = pool.allocate(2, 0)
    assert got is not None and got.slots == (0, 2)


def test_gpus_in_pool_order_and_none_when_short() -> None:
    pool = SlotPool(4, ["GPU-b", "GPU-a"])
    first = pool.allocate(1, 1)
    assert first is not None and first.gpus == ("GPU-b",)
    assert pool.allocate(1, 2) is None
    second = pool.allocate(1, 1)
    assert second is not None and second.gpus == ("GPU-a",)
    assert pool.free_gpus == 0


def test_too_many_cpus_is_none_and_changes_nothing() -> None:
    pool = SlotPool(2, [])
    assert pool.allocate(3, 0) is None
    assert pool.free_slots == 2


def test_release_twice_or_foreign_is_an_error() -> None:
    pool = SlotPool(4, ["0"])
    alloc = pool.allocate(2, 1)
    assert alloc is not None
    pool.release(alloc)
    with pytest.raises(ValueError, match="not allocated"):
        pool.release(alloc)
    with pytest.raises(ValueError, match="not allocated"):
        pool.release(Allocation(slots=(3,), gpus=()))
    assert pool.free_slots == 4 and pool.free_gpus == 1


def test_zero_sized_allocation() -> None:
    pool = SlotPool(1, [])
    alloc = pool.allocate(0, 0)
    assert alloc == Allocation(slots=(), gpus=())
    pool.release(alloc)
    with pytest.raises(ValueError):
        pool.release(alloc)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        SlotPool(-1, [])
    with pytest.raises(ValueError, match="unique"):
        SlotPool(1, ["0", "0"])
    with pytest.raises(ValueError):
        SlotPool(1, []).allocate(-1, 0)


def test_cores_for_maps_and_oversubscribes() -> None:
    assert cores_for([0, 1], [4, 5, 6, 7]) == frozenset({4, 5})
    assert cores_for(range(6), [2, 3]) == frozenset({2, 3})
    assert cores_for([5], [10, 11]) == frozenset({11})
    assert cores_for([], [0]) == frozenset()
    with pytest.raises(ValueError):
        cores_for([0], [])


@given(
    slots=st.integers(0, 16),
    n_gpus=st.integers(0, 4),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 20), st.integers(0, 5), st.integers(0, 50)), max_size=60),
)
@settings(max_examples=300, deadline=None)
def test_random_sequences_keep_the_books(slots: int, n_gpus: int, ops: list[tuple[bool, int, int, int]]) -> None:
    gpu_ids = [f"GPU-{i}" for i in range(n_gpus)]
    pool = SlotPool(slots, gpu_ids)
    live: list[Allocation] = []
    for is_alloc, cpus, gpus, pick in ops:
        if is_alloc or not live:
            enough = cpus <= pool.free_slots and gpus <= pool.free_gpus
            alloc = pool.allocate(cpus, gpus)
            assert (alloc is None) == (not enough)
            if alloc is not None:
                assert len(alloc.slots) == cpus and len(alloc.gpus) == gpus
                assert list(alloc.slots) == sorted(alloc.slots)
                live.append(alloc)
        else:
            pool.release(live.pop(pick % len(live)))
        used_slots = [s for a in live for s in a.slots]
        used_gpus = [g for a in live for g in a.gpus]
        assert len(used_slots) == len(set(used_slots)), "a slot is held twice"
        assert len(used_gpus) == len(set(used_gpus)), "a GPU is held twice"
        assert all(0 <= s < slots for s in used_slots)
        assert set(used_gpus) <= set(gpu_ids)
        assert pool.free_slots == slots - len(used_slots) >= 0
        assert pool.free_gpus == n_gpus - len(used_gpus) >= 0
    for alloc in live:
        pool.release(alloc)
    assert (pool.free_slots, pool.free_gpus) == (slots, n_gpus)


@given(slots=st.integers(1, 32), cpus=st.integers(1, 32))
def test_contiguous_when_the_pool_is_empty(slots: int, cpus: int) -> None:
    alloc = SlotPool(slots, []).allocate(cpus, 0)
    if cpus > slots:
        assert alloc is None
    else:
        assert alloc is not None and alloc.slots == tuple(range(cpus))


def spec_pick(free: list[bool], cpus: int) -> tuple[int, ...]:
    """Best fit as written in the pool's docstring: the shortest run of free ids that fits, lowest on ties."""
    runs, i = [], 0
    for is_free, group in itertools.groupby(free):
        n = len(list(group))
        if is_free:
            runs.append((n, i))
        i += n
    fitting = [r for r in runs if r[0] >= cpus]
    if fitting:
        start = min(fitting)[1]
        return tuple(range(start, start + cpus))
    return tuple(i for i, f in enumerate(free) if f)[:cpus]


@given(free=st.lists(st.booleans(), max_size=80), cpus=st.integers(0, 80))
def test_pick_slots_is_best_fit_then_lowest_ids(free: list[bool], cpus: int) -> None:
    mask = sum(1 << i for i, f in enumerate(free) if f)
    cpus = min(cpus, sum(free))
    assert pick_slots(mask, cpus) == (spec_pick(free, cpus) if cpus else ())


@given(
    slots=st.sets(st.integers(0, 200), max_size=40),
    core_ids=st.lists(st.integers(0, 127), min_size=1, max_size=16),
)
def test_cores_for_stays_within_the_given_cores(slots: set[int], core_ids: list[int]) -> None:
    cores = cores_for(slots, core_ids)
    assert cores <= set(core_ids)
    assert len(cores) <= min(len(slots), len(set(core_ids)))
    if len(set(core_ids)) == len(core_ids) and all(s < len(core_ids) for s in slots):
        assert len(cores) == len(slots)


class PoolMachine(RuleBasedStateMachine):
    """Stateful check: any interleaving of allocate and release keeps capacity exact."""

    allocations = Bundle("allocations")

    def __init__(self) -> None:
        super().__init__()
        self.pool = SlotPool(12, ["0", "1", "2"])
        self.held: list[Allocation] = []

    @rule(target=allocations, cpus=st.integers(0, 14), gpus=st.integers(0, 4))
    def allocate(self, cpus: int, gpus: int) -> Allocation | None:
        enough = cpus <= self.pool.free_slots and gpus <= self.pool.free_gpus
        alloc = self.pool.allocate(cpus, gpus)
        assert (alloc is not None) == enough
        if alloc is not None:
            self.held.append(alloc)
        return alloc

    @rule(alloc=consumes(allocations))
    def release(self, alloc: Allocation | None) -> None:
        if alloc is None:
            return
        self.pool.release(alloc)
        self.held.remove(alloc)
        if alloc not in self.held:  # an empty allocation may be held more than once
            with pytest.raises(ValueError):
                self.pool.release(alloc)

    @invariant()
    def books_balance(self) -> None:
        slots = [s for a in self.held for s in a.slots]
        gpus = [g for a in self.held for g in a.gpus]
        assert len(slots) == len(set(slots)) and len(gpus) == len(set(gpus))
        assert self.pool.free_slots == 12 - len(slots)
        assert self.pool.free_gpus == 3 - len(gpus)


TestPoolMachine = PoolMachine.TestCase
