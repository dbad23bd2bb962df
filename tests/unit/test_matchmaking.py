"""Matchmaking: what a pilot gets for its free resources and remaining lifetime."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from glidein_server.policy.matchmaking import PLAIN_POLICY, Candidate, Capacity, select


def cand(i: int, cpus: int = 1, mem: int = 100, gpus: int = 0, wall: int = 60) -> Candidate:
    return Candidate(i, cpus, mem, gpus, 0, wall)


TOTAL = Capacity(4, 4000, 1, 1000)


def test_fills_free_cores_in_candidate_order() -> None:
    cands = [cand(1, 4), cand(2, 2), cand(3, 1), cand(4, 1), cand(5, 1)]
    assert select(cands, Capacity(4, 4000, 0, 1000), TOTAL, 3600, 0) == [1]
    assert select(cands[1:], Capacity(4, 4000, 0, 1000), TOTAL, 3600, 0) == [2, 3, 4]


def test_never_gives_a_job_that_outlives_the_pilot() -> None:
    assert select([cand(1, wall=7200), cand(2, wall=100)], TOTAL, TOTAL, 3600, 0) == [2]


def test_memory_and_gpus_bound_the_claim() -> None:
    cands = [cand(1, mem=3000), cand(2, mem=3000), cand(3, gpus=1), cand(4, gpus=1)]
    assert select(cands, Capacity(4, 4000, 1, 1000), TOTAL, 3600, 0, policy=PLAIN_POLICY) == [1, 3]
    assert select(cands, Capacity(4, 4000, 1, 1000), TOTAL, 3600, 0) == [3, 1]  # GPU job first


def test_backlog_adds_jobs_that_fit_the_whole_pilot() -> None:
    cands = [cand(i) for i in range(1, 10)]
    got = select(cands, Capacity(0, 0, 0, 0), TOTAL, 3600, want=3)
    assert got == [1, 2, 3]
    assert select([cand(1, cpus=8)], Capacity(0, 0, 0, 0), TOTAL, 3600, want=3) == []


jobs = st.lists(
    st.tuples(st.integers(1, 4), st.integers(1, 4000), st.integers(0, 1), st.integers(1, 7200)), max_size=40
)


@given(jobs, st.integers(0, 4), st.integers(0, 4000), st.integers(0, 1), st.integers(0, 7200))
def test_never_exceeds_free_capacity_or_lifetime(
    specs: list[tuple[int, int, int, int]], cpus: int, mem: int, gpus: int, lifetime: int
) -> None:
    cands = [Candidate(i, c, m, g, 0, w) for i, (c, m, g, w) in enumerate(specs)]
    chosen = select(cands, Capacity(cpus, mem, gpus, 1000), TOTAL, lifetime, 0)
    picked = [c for c in cands if c.job_id in set(chosen)]
    assert len(set(chosen)) == len(chosen)
    assert sum(c.cpus for c in picked) <= cpus
    assert sum(c.memory_mb for c in picked) <= mem
    assert sum(c.gpus for c in picked) <= gpus
    assert all(c.walltime_s <= lifetime for c in picked)
