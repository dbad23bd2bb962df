"""What a run measures, gathered as it goes and summed up at the end."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Timeline:
    """Cores allocated (pilots running) and in use (jobs running), per site, every ``sample_s``."""

    t: list[float] = field(default_factory=list)
    allocated: dict[str, list[int]] = field(default_factory=dict)
    busy: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class Tally:
    allocated_core_s: float = 0.0
    busy_core_s: float = 0.0
    drain_idle_core_s: float = 0.0
    lost_core_s: float = 0.0  # core-seconds of attempts that ended without a result
    held_idle_core_s: float = 0.0  # estimate: not measured separately; 0 unless set
    pilots: int = 0
    pilots_black_hole: int = 0
    pilots_failed: int = 0
    pilots_retired: int = 0  # left as soon as they held no job in their last hours
    jobs_done: int = 0
    jobs_failed: int = 0  # gave up after their retries
    attempts: int = 0
    interrupted: int = 0  # attempts lost to node failures and pilot ends
    black_hole_failures: int = 0  # attempts that failed on a black-hole node
    job_failures: int = 0  # attempts that failed by the job's own fault
    retries: int = 0
    given_back: int = 0  # claims a pilot gave back unstarted
    reservations: int = 0
    wait_single: list[float] = field(default_factory=list)
    wait_multi: list[float] = field(default_factory=list)
    wait_gpu: list[float] = field(default_factory=list)
    ramp_alloc_s: float | None = None
    ramp_busy_s: float | None = None
    claims: int = 0


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _p90(xs: list[float]) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(0.9 * len(s)))]


def summary(t: Tally, ramp_cores: int) -> dict[str, float | int | None]:
    alloc = max(t.allocated_core_s, 1e-9)
    ms, mm = _median(t.wait_single), _median(t.wait_multi)
    return {
        "efficiency": t.busy_core_s / alloc if t.allocated_core_s else None,
        "draining_waste": t.drain_idle_core_s / alloc if t.allocated_core_s else None,
        "allocated_core_h": t.allocated_core_s / 3600,
        "busy_core_h": t.busy_core_s / 3600,
        "lost_core_h": t.lost_core_s / 3600,
        "wait_single_median_s": ms,
        "wait_single_p90_s": _p90(t.wait_single),
        "wait_multi_median_s": mm,
        "wait_multi_p90_s": _p90(t.wait_multi),
        "wait_gpu_median_s": _median(t.wait_gpu),
        "multi_over_single_wait": (mm / max(ms, 1.0)) if ms is not None and mm is not None else None,
        "ramp_cores": ramp_cores,
        "ramp_allocated_s": t.ramp_alloc_s,
        "ramp_busy_s": t.ramp_busy_s,
        "pilots": t.pilots,
        "pilots_black_hole": t.pilots_black_hole,
        "pilots_failed": t.pilots_failed,
        "pilots_retired": t.pilots_retired,
        "jobs_done": t.jobs_done,
        "jobs_failed": t.jobs_failed,
        "jobs_started_single": len(t.wait_single),
        "jobs_started_multi": len(t.wait_multi),
        "attempts": t.attempts,
        "lost_to_node_failures": t.interrupted,
        "lost_to_black_holes": t.black_hole_failures,
        "job_failures": t.job_failures,
        "retries": t.retries,
        "given_back": t.given_back,
        "reservations": t.reservations,
        "claims": t.claims,
    }
