"""A retiring pilot's last jobs: which walltime leaves each core the least idle time at the end.

A pilot holds all its cores until its last job ends, so every core that runs out of work early
idles until then. Jobs ask for more time than they use: a core that takes the longest job that
fits (``walltime <= time left``) ends, on average, with a fraction of its time left that no job
fits, and the cores of one pilot end at scattered times. Knowing how long jobs really run
relative to what they ask (:func:`runtime_ratio`, learnt from finished attempts), the server
can plan each core's last few jobs: :func:`idle_at_end` is the least idle time a core with
``left`` seconds can end with, picking among the walltimes waiting (each job runs ``ratio``
of its walltime); a claim takes first the jobs after which that is least.

A job is still given only if its whole walltime fits the pilot's remaining lifetime; the
ratio only orders the jobs that fit.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

#: Time is planned in steps of this many seconds (lifetimes are rounded down to a step).
STEP_S = 60
#: The ratio is learnt from this many of the latest successful attempts, and only from 20 or more.
SAMPLES = 500
MIN_SAMPLES = 20
#: The share of jobs that may run longer than the ratio says (a high quantile, not the mean).
QUANTILE = 0.99


def runtime_ratio(samples: Iterable[tuple[float, float]]) -> float:
    """How much of its walltime a job runs, from (wall seconds used, walltime asked) of finished
    jobs: the 90th percentile of their ratios, between 0.05 and 1; 1.0 while fewer than 20 are known."""
    ratios = sorted(min(1.0, used / asked) for used, asked in samples if asked > 0 and used >= 0)
    if len(ratios) < MIN_SAMPLES:
        return 1.0
    return max(0.05, ratios[min(len(ratios) - 1, int(QUANTILE * len(ratios)))])


@lru_cache(maxsize=64)
def _planner(walls: tuple[int, ...], ratio: float) -> dict[int, int]:
    return {}


def idle_at_end(left_s: float, walls: tuple[int, ...], ratio: float) -> int:
    """The least time (s) a core with ``left_s`` to live ends idle, running jobs of the walltimes
    ``walls`` (ascending, each used as often as wanted) that each run ``ratio`` of their walltime."""
    memo = _planner(walls, round(ratio, 3))
    uses = tuple(max(STEP_S, int(ratio * w) // STEP_S * STEP_S) for w in walls)
    return _idle(int(left_s) // STEP_S * STEP_S, walls, uses, memo)


def _idle(left: int, walls: tuple[int, ...], uses: tuple[int, ...], memo: dict[int, int]) -> int:
    best = memo.get(left)
    if best is not None:
        return best
    best = left
    for wall, use in zip(walls, uses, strict=True):
        if wall > left or best == 0:
            break
        best = min(best, _idle(left - use, walls, uses, memo))
    memo[left] = best
    return best


def plan_order(left_s: float, walls: Iterable[int], ratio: float) -> dict[int, tuple[int, int]]:
    """Sort key per walltime for a retiring pilot with ``left_s``: the least idle time at the end
    after a job of that walltime (then longer first). Walltimes over ``left_s`` are left out."""
    every = tuple(sorted(set(walls)))
    keys: dict[int, tuple[int, int]] = {}
    for wall in every:
        if wall <= left_s:
            use = max(STEP_S, int(ratio * wall) // STEP_S * STEP_S)
            keys[wall] = (idle_at_end(left_s - use, every, ratio), -wall)
    return keys
