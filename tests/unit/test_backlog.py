"""The pilot's backlog keeps the summed needs of its jobs as they come and go."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from glidein_client.pilot.backlog import Backlog, need_of
from glidein_client.pilot.partition import plan_starts
from glidein_client.wire.schema import ClaimedJob, JobSpec


def claim(i: int, cpus: int, mem: int, gpus: int) -> ClaimedJob:
    return ClaimedJob(
        attempt_id=i,
        job_id=i,
        lease="x",
        spec=JobSpec(argv=["true"], cpus=cpus, memory_mb=mem, gpus=gpus, disk_mb=i + 1),
    )


def sums(claims: list[ClaimedJob]) -> tuple[int, int, int, int]:
    return (
        sum(c.spec.cpus for c in claims),
        sum(c.spec.memory_mb for c in claims),
        sum(c.spec.gpus for c in claims),
        sum(c.spec.disk_mb for c in claims),
    )


@given(
    st.lists(st.tuples(st.integers(1, 8), st.integers(1, 4000), st.integers(0, 2)), max_size=20),
    st.lists(st.sampled_from(["pop", "take", "add"]), max_size=30),
    st.randoms(),
)
def test_sums_follow_every_change(shapes: list[tuple[int, int, int]], ops: list[str], rnd: random.Random) -> None:
    b = Backlog()
    b.extend(claim(i, *s) for i, s in enumerate(shapes))
    model = list(b)
    taken: list[ClaimedJob] = []
    for op in ops:
        if op == "pop" and model:
            taken.append(b.popleft())
            assert taken[-1] is model.pop(0)
        elif op == "take" and model:
            victim = rnd.choice(model)
            assert b.take(victim.attempt_id) is victim
            model.remove(victim)
        elif op == "add" and taken:
            b.extend(taken + model[:1])  # one already waiting: not added twice
            model += taken
            taken = []
        assert list(b) == model
        assert (b.cpus, b.memory_mb, b.gpus, b.disk_mb) == sums(model)
    assert b.take(10_000) is None


SHAPES = st.tuples(st.integers(1, 4), st.sampled_from([100, 500, 2000]), st.integers(0, 1), st.sampled_from([60, 7200]))


@given(
    st.lists(SHAPES, max_size=40),
    st.integers(0, 8),
    st.integers(0, 2),
    st.integers(0, 4000),
    st.randoms(),
)
def test_plan_matches_the_walk_over_every_waiting_job(
    shapes: list[tuple[int, int, int, int]], free_slots: int, free_gpus: int, memory_mb: int, rnd: random.Random
) -> None:
    """Grouped by shape, the backlog starts and gives back exactly the jobs that the plain walk over
    all waiting jobs (plan_starts, the rule the simulator also uses) picks, in the same order."""
    b = Backlog()
    claims = [
        ClaimedJob(
            attempt_id=1000 - i,  # arrival order, not attempt order, is what counts
            job_id=i,
            lease="x",
            spec=JobSpec(argv=["true"], cpus=c, memory_mb=m, gpus=g, disk_mb=1, walltime_s=w),
        )
        for i, (c, m, g, w) in enumerate(shapes)
    ]
    b.extend(claims)
    for victim in rnd.sample(claims, len(claims) // 4):  # cancels leave holes in the order
        b.take(victim.attempt_id)
    waiting = list(b)
    start, give_back = plan_starts([need_of(c) for c in waiting], free_slots, free_gpus, memory_mb, 100, 3600)
    assert b.plan(free_slots, free_gpus, memory_mb, 100, 3600) == (
        [waiting[i] for i in start],
        [waiting[i] for i in give_back],
    )
    assert list(b) == waiting  # planning takes nothing out
