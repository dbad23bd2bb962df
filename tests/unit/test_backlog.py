"""The pilot's backlog keeps the summed needs of its jobs as they come and go."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from glidein_client.pilot.backlog import Backlog
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
    st.lists(st.sampled_from(["pop", "take", "putback"]), max_size=30),
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
        elif op == "putback" and taken:
            b.putback(taken)
            model = taken + model
            taken = []
        assert list(b) == model
        assert (b.cpus, b.memory_mb, b.gpus, b.disk_mb) == sums(model)
    assert b.take(10_000) is None
