"""The scheduling rules the simulator measured: end-of-life backfill, GPU first, bounded reservations."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from glidein_client.pilot.partition import Need, failure_streak, plan_starts
from glidein_client.wire.schema import Outcome
from glidein_server.policy.matchmaking import PLAIN_POLICY, Candidate, Capacity, MatchPolicy, claim_order, select
from glidein_server.policy.reservation import ReservationPolicy, Reservations, Waiting

TOTAL = Capacity(4, 4000, 1, 1000)


def cand(i: int, cpus: int = 1, gpus: int = 0, wall: int = 3600) -> Candidate:
    return Candidate(i, cpus, 100, gpus, 0, wall)


def test_a_retiring_pilot_takes_only_jobs_that_fit_longest_or_shortest_first() -> None:
    cands = [cand(1, wall=7000), cand(2, wall=5000), cand(3, wall=1200), cand(4, wall=600)]
    free = Capacity(2, 4000, 0, 1000)
    assert select(cands, free, TOTAL, 7200, 0, policy=PLAIN_POLICY) == [1, 2]
    assert select(cands, free, TOTAL, 7200, 0) == [1, 2]  # in its last 3 h: the longest that fit
    shortest = MatchPolicy(eol_order="shortest")
    assert select(cands, free, TOTAL, 7200, 0, policy=shortest) == [4, 3]
    assert select(cands, free, TOTAL, 5500, 0) == [2, 3]  # 7000 s no longer fits
    assert select(cands, free, TOTAL, 7200, 0, policy=MatchPolicy(eol_window_s=3600)) == [1, 2]


def test_a_gpu_pilot_gives_its_gpu_to_the_gpu_job_and_keeps_room_for_it() -> None:
    cands = [cand(1, cpus=2), cand(2), cand(3), cand(4), cand(5, cpus=2, gpus=1)]
    free = Capacity(4, 4000, 1, 1000)
    assert select(cands, free, TOTAL, 36000, 0, policy=PLAIN_POLICY) == [1, 2, 3]
    assert select(cands, free, TOTAL, 36000, 0) == [5, 1]
    # Only 1 core free: the GPU job does not fit yet, and CPU-only jobs may not take its core.
    assert select(cands, Capacity(1, 4000, 1, 1000), TOTAL, 36000, 0) == []
    assert select(cands, Capacity(3, 4000, 1, 1000), TOTAL, 36000, 0) == [5, 2]


def test_a_reservation_keeps_cores_for_the_held_job_only() -> None:
    big = cand(9, cpus=4)
    singles = [cand(i) for i in range(1, 5)]
    assert select(singles, Capacity(2, 4000, 0, 1000), TOTAL, 36000, 0, reserve=big) == []
    assert select([big, *singles], Capacity(4, 4000, 0, 1000), TOTAL, 36000, 0, reserve=big) == [9]


def test_reservations_are_bounded_one_pilot_per_job_and_in_time() -> None:
    policy = ReservationPolicy(after_s=1800, max_hold_s=3600)
    r = Reservations(policy)
    job = cand(7, cpus=4)
    waiting = [Waiting(job, idle_since=0.0)]
    assert r.for_pilot(1, waiting, TOTAL, 36000, now=1000) is None  # not starving yet
    assert r.for_pilot(1, waiting, TOTAL, 36000, now=2000) == job
    assert r.for_pilot(2, waiting, TOTAL, 36000, now=2000) is None  # one holder per job
    assert r.for_pilot(1, waiting, TOTAL, 36000, now=5000) == job
    assert r.for_pilot(1, waiting, TOTAL, 36000, now=5700) is None  # held too long: let go ...
    assert r.for_pilot(1, waiting, TOTAL, 36000, now=6000) is None  # ... and rest before holding again
    assert r.for_pilot(2, waiting, TOTAL, 36000, now=6000) == job  # another pilot may try
    r.claimed(7)
    assert r.holder(7) is None and len(r) == 0
    assert r.made == 2


def test_the_pilot_starts_what_fits_and_gives_back_what_cannot_finish() -> None:
    waiting = [Need(2, 100, 0, 0, 100), Need(1, 100, 0, 0, 99999), Need(4, 100, 0, 0, 100), Need(1, 100, 1, 0, 100)]
    assert plan_starts(waiting, 4, 1, 1000, 0, 3600) == ([0, 3], [1])
    assert plan_starts(waiting, 0, 1, 1000, 0, 3600) == ([], [])


def test_failure_streak_counts_only_the_nodes_fast_failures_in_a_row() -> None:
    s = failure_streak(0, Outcome.INTERRUPTED, 2.0, 10.0)
    s = failure_streak(s, Outcome.FAILED, 1.0, 10.0)  # the job's own: says nothing about the node
    s = failure_streak(s, Outcome.MEMORY, 1.0, 10.0)
    assert s == 1
    assert failure_streak(s, Outcome.INTERRUPTED, 3.0, 10.0) == 2
    assert failure_streak(s, Outcome.INTERRUPTED, 30.0, 10.0) == 1
    assert failure_streak(s, Outcome.DONE, 3.0, 10.0) == 0


shapes = st.sampled_from([(1, 0, 3600), (1, 0, 5400), (2, 0, 3600), (4, 0, 7200), (1, 1, 3600)])


@given(
    st.lists(st.tuples(shapes, st.integers(0, 2)), max_size=40),
    st.integers(1, 4),
    st.integers(0, 1),
    st.sampled_from([1000.0, 4000.0, 30000.0]),
    st.booleans(),
)
def test_a_few_jobs_per_shape_give_select_the_same_answer_as_all(
    jobs: list[tuple[tuple[int, int, int], int]], cpus: int, gpus: int, lifetime: float, plain: bool
) -> None:
    """What the simulator relies on to hand a claim at most ``free cpus`` jobs of each shape."""
    cands = sorted(
        ((Candidate(i, c, 100, g, 0, w), prio) for i, ((c, g, w), prio) in enumerate(jobs)),
        key=lambda cp: claim_order(cp[1], cp[0].cpus, cp[0].job_id),
    )
    seen: dict[tuple[int, int, int, int], int] = {}
    few = []
    for c, prio in cands:
        key = (prio, c.cpus, c.gpus, c.walltime_s)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= cpus:
            few.append(c)
    policy = PLAIN_POLICY if plain else MatchPolicy()
    free = Capacity(cpus, 4000, gpus, 1000)
    full = select([c for c, _ in cands], free, TOTAL, lifetime, 0, policy=policy)
    assert select(few, free, TOTAL, lifetime, 0, policy=policy) == full
