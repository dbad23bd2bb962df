"""What the simulation moves: simulated sites and pilots, and the rule sets it compares."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from glidein_client.pilot.partition import Allocation, SlotPool
from glidein_client.site.decisions import LimitsSection, PilotJob, PilotState
from glidein_client.wire.schema import Outcome, PilotShape
from glidein_server.policy.matchmaking import BACKFILL_POLICY, PLAIN_POLICY, Capacity, MatchPolicy
from glidein_server.policy.reservation import ReservationPolicy
from glidein_sim.queue import Job
from glidein_sim.scenario import Scenario, SiteSpec


@dataclass(frozen=True)
class Rules:
    """The scheduling code's knobs: the plain greedy fill ("as it was") or the improved rules."""

    label: str
    match: MatchPolicy
    reservation: ReservationPolicy | None


def plain_rules() -> Rules:
    return Rules("as it was", PLAIN_POLICY, None)


def improved_rules(sc: Scenario, label: str = "improved", **knobs: Any) -> Rules:
    return Rules(
        label,
        MatchPolicy(
            eol_window_s=sc.eol_window_s, eol_order="shortest" if sc.eol_order == "shortest" else "longest", **knobs
        ),
        ReservationPolicy(after_s=sc.reservation_after_s, max_hold_s=sc.reservation_max_hold_s),
    )


def backfill_rules(sc: Scenario) -> Rules:
    """The rules before end-of-life planning: longest fit in the last 3 h, GPU first, reservations."""
    return Rules(
        "backfill",
        BACKFILL_POLICY,
        ReservationPolicy(after_s=sc.reservation_after_s, max_hold_s=sc.reservation_max_hold_s),
    )


class Pilot:
    __slots__ = (
        "black_hole",
        "disk_free",
        "end",
        "gen",
        "id",
        "job",
        "mem_free",
        "pool",
        "runs",
        "idle_since",
        "running",
        "site",
        "start",
        "state",
        "stopping",
        "streak",
        "submitted",
    )

    def __init__(self, pilot_id: int, site: Site, now: float) -> None:
        self.id = pilot_id
        self.site = site
        self.submitted = now
        self.state = PilotState.QUEUED
        self.job = PilotJob(str(pilot_id), pilot_id, PilotState.QUEUED, submitted_at=now)
        self.pool = SlotPool(0, ())
        self.mem_free = self.disk_free = 0
        self.start = self.end = self.idle_since = 0.0
        self.running: dict[
            int, tuple[Job, Allocation, float, Outcome]
        ] = {}  # job id -> job, allocation, start, generation
        self.runs: list[tuple[float, float, int]] = []
        self.streak = 0
        self.gen = 0
        self.black_hole = False
        self.stopping = False


class Site:
    def __init__(self, spec: SiteSpec) -> None:
        self.spec = spec
        p = spec.pilot
        self.name = spec.name
        self.end_margin_s = p.end_margin_s
        self.idle_timeout_s = p.idle_timeout_s
        self.shape = PilotShape(
            cpus=p.cpus, memory_mb=p.memory_mb, gpus=p.gpus, disk_mb=p.disk_mb, walltime_s=p.walltime_s
        )
        self.limits = LimitsSection(
            max_pilots=spec.max_pilots,
            max_idle_pilots=spec.max_idle_pilots,
            max_submit_per_cycle=spec.max_submit_per_cycle,
        )
        self.waiting: dict[int, Pilot] = {}  # queued in the batch system
        self.ready: list[Pilot] = []  # their queue wait is over, but the site is full
        self.live: dict[int, Pilot] = {}  # running
        self.hungry: set[int] = set()  # running pilots with free cores that the last claim could not fill
        self.rng = random.Random()
        self.total = Capacity(p.cpus, p.memory_mb, p.gpus, p.disk_mb)
        self.alloc_cores = 0
        self.busy_cores = 0
