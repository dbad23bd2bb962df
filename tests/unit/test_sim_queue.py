"""The simulator's idle queue hands select a few jobs per shape: the same choice as every fitting job."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from glidein_client.pilot.partition import Need
from glidein_server.policy.matchmaking import PLAIN_POLICY, Candidate, Capacity, MatchPolicy, claim_order, select
from glidein_sim.queue import IdleQueue, Job

SHAPES = [  # (priority, cpus, memory_mb, gpus, walltime_s, sites)
    (0, 1, 1000, 0, 3600, None),
    (0, 1, 2000, 0, 7200, None),
    (0, 4, 8000, 0, 7200, None),
    (1, 2, 3000, 0, 5400, frozenset({"a"})),
    (0, 1, 1000, 1, 3600, None),
    (0, 2, 1000, 0, 3600, frozenset({"b"})),
]

jobs_st = st.lists(st.tuples(st.integers(0, len(SHAPES) - 1), st.booleans()), min_size=0, max_size=40)


@given(
    jobs=jobs_st,
    cpus=st.integers(1, 8),
    mem=st.integers(0, 20000),
    gpus=st.integers(0, 1),
    lifetime=st.sampled_from([1800.0, 4000.0, 6000.0, 10000.0, 40000.0]),
    policy=st.sampled_from([PLAIN_POLICY, MatchPolicy()]),
)
@settings(max_examples=150, deadline=None)
def test_candidates_give_select_the_answer_of_every_fitting_job(
    jobs: list[tuple[int, bool]], cpus: int, mem: int, gpus: int, lifetime: float, policy: MatchPolicy
) -> None:
    queue = IdleQueue(1)
    every: list[Job] = []
    for job_id, (shape, _) in enumerate(jobs, start=1):
        prio, c, m, g, wall, sites = SHAPES[shape]
        cand = Candidate(job_id, c, m, g, 0, wall)
        job = Job(cand, 0, (prio, c, m, g, 0, wall, sites), Need(c, m, g, 0, wall), 100.0, 0.0)
        every.append(job)
    # Some jobs come back to the queue after newer ones (a retry keeps its place by id).
    for job in [j for j, (_, requeued) in zip(every, jobs, strict=True) if not requeued]:
        queue.add(job, 0.0)
    for job in [j for j, (_, requeued) in zip(every, jobs, strict=True) if requeued]:
        queue.add(job, 0.0)
    fitting = [
        j
        for j in every
        if j.cand.cpus <= cpus
        and j.cand.memory_mb <= mem
        and j.cand.gpus <= gpus
        and j.cand.walltime_s <= int(lifetime)
        and (j.sites is None or "a" in j.sites)
    ]
    fitting.sort(key=lambda j: claim_order(j.priority, j.cand.cpus, j.id))
    free, total = Capacity(cpus, mem, gpus, 0), Capacity(8, 20000, 1, 0)
    assert select(
        queue.candidates("a", cpus, mem, gpus, 0, lifetime), free, total, lifetime, 0, policy=policy
    ) == select([j.cand for j in fitting], free, total, lifetime, 0, policy=policy)
