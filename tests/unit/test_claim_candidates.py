"""A claim reads no more of each job shape than it can take: the same choice as every fitting job."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from glidein_server.policy.matchmaking import PLAIN_POLICY, Candidate, Capacity, MatchPolicy, claim_order, select
from glidein_server.store import candidates

SHAPES = [  # (cpus, memory_mb, gpus, disk_mb, walltime_s)
    (1, 1000, 0, 100, 3600),
    (1, 2000, 0, 100, 7200),
    (4, 8000, 0, 100, 7200),
    (2, 3000, 0, 500, 5400),
    (1, 1000, 1, 100, 3600),
    (8, 4000, 0, 100, 3600),
]
TOTAL = Capacity(8, 20000, 1, 1000)


@given(
    jobs=st.lists(st.tuples(st.integers(0, len(SHAPES) - 1), st.integers(0, 2)), max_size=60),
    cpus=st.integers(0, 8),
    mem=st.integers(0, 20000),
    gpus=st.integers(0, 1),
    disk=st.sampled_from([0, 100, 300, 1000]),
    want=st.integers(0, 3),
    lifetime=st.sampled_from([1800.0, 4000.0, 6000.0, 10000.0, 40000.0]),
    policy=st.sampled_from([PLAIN_POLICY, MatchPolicy()]),
)
@settings(max_examples=300, deadline=None)
def test_each_shapes_best_few_give_select_the_answer_of_every_fitting_job(
    jobs: list[tuple[int, int]],
    cpus: int,
    mem: int,
    gpus: int,
    disk: int,
    want: int,
    lifetime: float,
    policy: MatchPolicy,
) -> None:
    free = Capacity(cpus, mem, gpus, disk)
    cap = TOTAL if want > 0 else free
    rows = [(job_id, *SHAPES[shape], prio) for job_id, (shape, prio) in enumerate(jobs, start=1)]
    fitting = [
        r for r in rows if r[1] <= cap.cpus and r[2] <= cap.memory_mb and r[3] <= cap.gpus and r[4] <= cap.disk_mb
    ]
    order = sorted(fitting, key=lambda r: claim_order(r[6], r[1], r[0]))
    every = [Candidate(*r[:6]) for r in order]
    read: list[tuple[int, ...]] = []
    for shape in {r[1:6] for r in fitting}:  # each shape's best (priority, then age), as the index gives them
        mine = sorted((r for r in fitting if r[1:6] == shape), key=lambda r: (-r[6], r[0]))
        limit = candidates.per_shape((*shape[:4], 0, ""), cpus, mem, gpus, disk, want, 1000)
        read += mine[:limit]
    few = [Candidate(*r) for r in candidates.best(read, 1000)]
    assert len(few) <= len(every)
    args = (free, TOTAL, lifetime, want)
    assert select(few, *args, policy=policy) == select(every, *args, policy=policy)


def test_a_shape_that_cannot_fit_is_not_read_and_one_that_can_is_read_as_far_as_it_fits() -> None:
    four = (4, 8000, 0, 100, 3600, "")
    assert candidates.per_shape(four, 8, 32000, 0, 1000, 0, 24) == 2
    assert candidates.per_shape(four, 8, 12000, 0, 1000, 0, 24) == 1  # memory for one
    assert candidates.per_shape(four, 8, 12000, 0, 1000, 3, 24) == 4  # and the backlog wanted
    assert candidates.per_shape(four, 2, 32000, 0, 1000, 0, 24) == 0
    assert candidates.per_shape((1, 0, 0, 0, 60, ""), 100, 0, 0, 0, 0, 24) == 24  # at most the scan


@given(
    jobs=st.lists(st.tuples(st.integers(0, len(SHAPES) - 1), st.integers(0, 2), st.booleans()), max_size=60),
    cpus=st.integers(0, 8),
    mem=st.integers(0, 20000),
    want=st.integers(0, 3),
    lifetime=st.sampled_from([1800.0, 4000.0, 6000.0, 10000.0, 40000.0]),
    policy=st.sampled_from([PLAIN_POLICY, MatchPolicy()]),
)
@settings(max_examples=300, deadline=None)
def test_a_pilot_claiming_with_others_is_offered_what_its_own_scan_would_give_select(
    jobs: list[tuple[int, int, bool]], cpus: int, mem: int, want: int, lifetime: float, policy: MatchPolicy
) -> None:
    """Several pilots share one read of candidates; each is offered the untaken ones, at most
    (cores + backlog) of each size, and select chooses as it would from every untaken fitting job."""
    free = Capacity(cpus, mem, 1, 1000)
    cap = TOTAL if want > 0 else free
    rows = [(job_id, *SHAPES[shape], prio) for job_id, (shape, prio, _) in enumerate(jobs, start=1)]
    order = [Candidate(*r[:6]) for r in sorted(rows, key=lambda r: claim_order(r[6], r[1], r[0]))]
    taken = {job_id for job_id, (_, _, gone) in enumerate(jobs, start=1) if gone}
    every = [c for c in order if c.job_id not in taken and candidates.fits(c, cap, lifetime)]
    offered = candidates.offer(candidates.pool_of({"alice": order}), taken, cap, lifetime, cap.cpus + want)
    mine = offered.get("alice", [])
    assert mine == [c for c in every if c in mine]  # untaken and fitting, in claim order
    args = (free, TOTAL, lifetime, want)
    assert select(mine, *args, policy=policy) == select(every, *args, policy=policy)
