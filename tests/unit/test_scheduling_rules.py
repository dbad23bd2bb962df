"""The scheduling rules the simulator measured: end-of-life backfill, GPU first, bounded reservations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glidein_client.pilot.partition import Need, failure_streak, plan_starts
from glidein_client.wire.schema import Outcome
from glidein_server.policy.endoflife import idle_at_end, plan_order, runtime_ratio
from glidein_server.policy.matchmaking import (
    BACKFILL_POLICY,
    PLAIN_POLICY,
    Candidate,
    Capacity,
    MatchPolicy,
    claim_order,
    leaves,
    select,
)
from glidein_server.policy.reservation import ReservationPolicy, Reservations, Waiting

TOTAL = Capacity(4, 4000, 1, 1000)
HOUR = 3600.0


def cand(i: int, cpus: int = 1, gpus: int = 0, wall: int = 3600) -> Candidate:
    return Candidate(i, cpus, 100, gpus, 0, wall)


def test_a_retiring_pilot_takes_only_jobs_that_fit_longest_or_shortest_first() -> None:
    cands = [cand(1, wall=7000), cand(2, wall=5000), cand(3, wall=1200), cand(4, wall=600)]
    free = Capacity(2, 4000, 0, 1000)
    assert select(cands, free, TOTAL, 7200, 0, policy=PLAIN_POLICY) == [1, 2]
    longest = BACKFILL_POLICY  # in its last 3 h: the longest that fit
    assert select(cands, free, TOTAL, 7200, 0, policy=longest) == [1, 2]
    shortest = MatchPolicy(eol_order="shortest", eol_align=False)
    assert select(cands, free, TOTAL, 7200, 0, policy=shortest) == [4, 3]
    assert select(cands, free, TOTAL, 5500, 0, policy=longest) == [2, 3]  # 7000 s no longer fits
    # Planned (jobs use all they ask): 1200 + 600 s jobs fill the 7200 s exactly, 7000 s would leave 200.
    assert select(cands, free, TOTAL, 7200, 0) == [3, 4]
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


def test_the_runtime_ratio_is_a_high_quantile_of_what_jobs_used_of_their_walltime() -> None:
    assert runtime_ratio([(1800.0, 3600.0)] * 19) == 1.0  # too few to learn from
    # Used 0.30 .. 0.795 of what they asked: the 99th percentile of the hundred is 0.795.
    assert runtime_ratio([(0.3 + 0.005 * i, 1.0) for i in range(100)]) == pytest.approx(0.795)
    assert runtime_ratio([(9000.0, 3600.0)] * 30) == 1.0  # a job past its walltime counts as 1
    assert runtime_ratio([(0.0, 3600.0)] * 30) == 0.05  # never below 5 %


def test_a_core_plans_its_last_jobs_for_the_least_idle_time_at_the_end() -> None:
    # 3 h left, jobs of 1.5 h and 2.5 h walltime that use 80 % of it (72 and 120 min).
    # The 2.5 h job leaves 60 min in which nothing fits; a 1.5 h job leaves 108 min, in which
    # another 1.5 h job runs 72 min: 36 min idle at the end.
    walls = (5400, 9000)
    assert idle_at_end(3 * HOUR, walls, 0.8) == 2160
    assert plan_order(3 * HOUR, walls, 0.8) == {5400: (2160, -5400), 9000: (3600, -9000)}
    assert idle_at_end(3000, walls, 0.8) == 3000  # nothing fits: the whole time is idle
    # Jobs that use all they ask: the 2.5 h job leaves 30 min idle; two 1.5 h jobs fill 3 h exactly.
    assert plan_order(3 * HOUR, walls, 1.0) == {5400: (0, -5400), 9000: (1800, -9000)}


def test_a_retiring_pilot_takes_the_job_after_which_its_core_idles_least() -> None:
    cands = [cand(1, wall=9000), cand(2, wall=5400)]
    one = Capacity(1, 4000, 0, 1000)
    assert select(cands, one, TOTAL, 3 * HOUR, 0, runtime_ratio=0.8) == [2]
    assert select(cands, one, TOTAL, 3 * HOUR, 0, runtime_ratio=0.8, policy=BACKFILL_POLICY) == [1]  # longest fit
    assert select(cands, one, TOTAL, 7 * HOUR, 0, runtime_ratio=0.8) == [1]  # not retiring: claim order
    assert select(cands, one, TOTAL, 2 * HOUR, 0, runtime_ratio=0.8) == [2]  # 2.5 h no longer fits


def test_a_retiring_pilot_that_got_nothing_leaves() -> None:
    assert leaves(3 * HOUR, 0)
    assert not leaves(3 * HOUR, 1)  # it got work
    assert not leaves(7 * HOUR, 0)  # not retiring: it waits for work, up to its idle timeout
    assert not leaves(3 * HOUR, 0, BACKFILL_POLICY)
    assert not leaves(3 * HOUR, 0, PLAIN_POLICY)
