"""How a pilot's work goes: core-seconds used, jobs run, their typical length, and black holes."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from glidein_client.pilot.partition import failure_streak
from glidein_client.wire.schema import Outcome


@dataclass
class WorkStats:
    start: float = field(default_factory=time.time)
    core_s: float = 0.0
    jobs: int = 0
    runtime_ewma_s: float | None = None
    fast_failures: int = 0  # jobs in a row that failed within seconds of starting

    def add(self, cpus: int, wall_s: float) -> None:
        self.core_s += cpus * wall_s
        self.jobs += 1
        prev = self.runtime_ewma_s
        self.runtime_ewma_s = wall_s if prev is None else 0.8 * prev + 0.2 * wall_s

    def want(self, slots: int, prefetch_s: float, max_backlog: int) -> int:
        """Jobs to hold ahead: about ``prefetch_s`` of work per slot, only while jobs are seen to be short."""
        r = self.runtime_ewma_s
        if r is None or r >= prefetch_s:
            return 0
        return min(max_backlog, math.ceil(slots * prefetch_s / max(r, 1e-3)))

    def occupancy(self, slots: int, now: float) -> float:
        elapsed = max(now - self.start, 1e-6)
        return min(1.0, self.core_s / (slots * elapsed))

    def black_hole(self, outcome: Outcome, wall_s: float, *, failures: int, fast_s: float) -> str | None:
        """Why to stop taking work, when job after job fails within ``fast_s``: the node, not the
        jobs, is likely broken. ``None`` while that is not so."""
        before = self.fast_failures
        self.fast_failures = failure_streak(before, outcome, wall_s, fast_s)
        if self.fast_failures > before and self.fast_failures >= failures:
            return (
                f"black hole: the last {self.fast_failures} jobs could not run on this node (the pilot failed "
                f"them within {fast_s:.0f} s, not the jobs themselves); check this node"
            )
        return None
