"""Fair share between users: priority orders a user's own jobs; cores in use per share decide between users."""

from __future__ import annotations

from collections import Counter

from glidein_server.policy.fairshare import Shares, fair_order
from glidein_server.policy.matchmaking import Candidate, Capacity, select


def jobs(first_id: int, n: int, cpus: int = 1) -> list[Candidate]:
    return [Candidate(first_id + i, cpus, 100, 0, 10, 60) for i in range(n)]


def owners(order: list[Candidate], queues: dict[str, list[Candidate]]) -> list[str]:
    who = {c.job_id: u for u, q in queues.items() for c in q}
    return [who[c.job_id] for c in order]


def test_equal_shares_alternate_whatever_the_backlog_or_priority() -> None:
    queues = {"alice": jobs(1000, 50), "bob": jobs(1, 3)}  # bob's queue is short, alice's long
    order = list(fair_order(queues, {}, Shares()))
    assert owners(order[:6], queues) == ["bob", "alice", "bob", "alice", "bob", "alice"]
    assert len(order) == 53  # nobody's jobs are lost; alice gets the rest once bob is done


def test_cores_in_use_count_and_multicore_jobs_weigh_their_cores() -> None:
    queues = {"alice": jobs(1, 10), "bob": jobs(100, 10, cpus=4)}
    order = list(fair_order(queues, {"alice": 8}, Shares()))
    # alice holds 8 cores: bob's 4-core jobs come first until bob holds as many.
    assert owners(order[:3], queues) == ["bob", "bob", "alice"]
    counted = Counter(owners(order[:12], queues))
    cores = {"alice": 8 + counted["alice"], "bob": 4 * counted["bob"]}
    assert abs(cores["alice"] - cores["bob"]) <= 4


def test_shares_split_the_cores_in_proportion() -> None:
    queues = {"alice": jobs(1, 100), "bob": jobs(200, 100), "carol": jobs(400, 100)}
    shares = Shares(per_user={"alice": 3.0, "carol": 0.5}, default=1.0)
    picked = select(
        fair_order(queues, {}, shares), Capacity(90, 10**6, 0, 10**6), Capacity(90, 10**6, 0, 10**6), 3600, 0
    )
    got = Counter(owners([c for q in queues.values() for c in q if c.job_id in set(picked)], queues))
    assert got == {"alice": 60, "bob": 20, "carol": 10}


def test_a_user_alone_gets_everything_in_their_own_priority_order() -> None:
    mine = jobs(1, 5)
    assert [c.job_id for c in fair_order({"alice": mine}, {"bob": 1000}, Shares())] == [1, 2, 3, 4, 5]


def test_ties_go_to_the_oldest_job() -> None:
    queues = {"zed": jobs(1, 2), "amy": jobs(5, 2)}
    assert owners(list(fair_order(queues, {}, Shares())), queues) == ["zed", "amy", "zed", "amy"]
