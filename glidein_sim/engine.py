"""The simulation: virtual time, events in a heap, and the project's own decisions at each step.

Server: :func:`~glidein_server.policy.demand.site_demand` for each client cycle,
:func:`~glidein_server.policy.matchmaking.select` (with its :class:`MatchPolicy` and, when on,
:class:`~glidein_server.policy.reservation.Reservations`) for each claim, and
:func:`~glidein_server.policy.lifecycle.plan_attempt_end` when an attempt fails. Site client:
:func:`~glidein_client.site.decisions.decide` every cycle. Pilot:
:class:`~glidein_client.pilot.partition.SlotPool`, :func:`~glidein_client.pilot.partition.plan_starts`
and :func:`~glidein_client.pilot.partition.failure_streak`. A claim is answered at once (no network),
and a pilot claims whenever cores free up or a new kind of job appears, as a long-polling pilot does.
"""

from __future__ import annotations

import gc
import heapq
import random
from collections import deque
from collections.abc import Callable
from functools import cache, partial
from operator import attrgetter
from typing import Any

import msgspec

from glidein_client.pilot.partition import Allocation, Need, SlotPool, failure_streak, plan_starts
from glidein_client.site.decisions import PilotJob, PilotState, decide
from glidein_client.wire.schema import JobSpec, Outcome
from glidein_server.policy.demand import FreeCapacity, site_demand
from glidein_server.policy.endoflife import SAMPLES, runtime_ratio
from glidein_server.policy.lifecycle import RetryBudget, Step, needs_budget, plan_attempt_end
from glidein_server.policy.matchmaking import Candidate, Capacity, leaves, select
from glidein_server.policy.reservation import Reservations
from glidein_server.policy.retry import RetryPolicy
from glidein_sim.metrics import Tally, Timeline
from glidein_sim.model import Pilot, Rules, Site
from glidein_sim.queue import IdleQueue, Job, MulticoreWaiting, ShapeKey
from glidein_sim.scenario import Scenario

_need = attrgetter("need")
#: A pilot's free capacity takes few distinct values: each is built once (a named tuple costs ~1 µs to make).
_capacity = cache(Capacity)
#: ``Candidate._make`` without its length check: a job's candidate in half the time ``Candidate(...)`` takes.
_candidate: Callable[[tuple[int, int, int, int, int, int]], Candidate] = partial(tuple.__new__, Candidate)

# Enum members read once: looking one up on its class costs about half a microsecond.
_QUEUED, _RUNNING, _CANCELLED, _ENDED = PilotState.QUEUED, PilotState.RUNNING, PilotState.CANCELLED, PilotState.DONE
_DONE, _FAILED, _INTERRUPTED = Outcome.DONE, Outcome.FAILED, Outcome.INTERRUPTED
_FAIL, _RETRY = Step.FAIL, Step.RETRY

# Event kinds, in the order they run at one instant.
_JOB_END, _PILOT_READY, _PILOT_END, _NODE_FAIL, _IDLE, _ARRIVE, _CYCLE, _SAMPLE = range(8)


class Simulation:
    def __init__(self, sc: Scenario, rules: Rules) -> None:
        self.sc, self.rules = sc, rules
        self.now = 0.0
        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self.queue = IdleQueue(len(sc.work))
        self.jobs: dict[int, Job] = {}
        self._next_job = self._next_pilot = 1
        self.sites = [Site(s) for s in sc.sites]
        for i, site in enumerate(self.sites):
            site.rng.seed(sc.seed * 1_000_003 + i)
        self.site_shapes = {s.spec.name: s.shape for s in self.sites}
        self._work_rng = [random.Random(sc.seed * 7919 + i) for i in range(len(sc.work))]
        self._draw = [w.runtime.sampler(rng) for w, rng in zip(sc.work, self._work_rng, strict=True)]
        self._shape_of: list[dict[int, tuple[ShapeKey, Need]]] = [{} for _ in sc.work]  # walltime -> shape
        self.reservations = Reservations(rules.reservation) if rules.reservation else None
        self.tally = Tally()
        self.timeline = Timeline(
            allocated={s.spec.name: [] for s in self.sites}, busy={s.spec.name: [] for s in self.sites}
        )
        self.ramp_cores = sc.ramp_cores or max(1, int(0.9 * sc.cores))
        self.drain_window_s = 0.0  # the longest walltime any job asked for
        self._alloc = self._busy = 0
        self._offer_due = False
        self._retry_policy = RetryPolicy()
        self._fail = [w.fail_fraction for w in sc.work]
        self._keep_idle = [w.keep_idle for w in sc.work]
        self._fixed_wall = [w.walltime_s for w in sc.work]  # 0: from each job's runtime
        t = self.tally
        self._waits = [t.wait_gpu if w.gpus else t.wait_multi if w.cpus > 1 else t.wait_single for w in sc.work]
        self._done_runs: deque[tuple[float, int]] = deque(maxlen=SAMPLES)  # (wall used, walltime) of the latest
        self.ratio = 1.0  # what jobs use of their walltime, as the server learns it (refreshed every sample)
        self._handlers: dict[int, Callable[[Any], None]] = {
            _JOB_END: self._job_end,
            _PILOT_READY: self._pilot_ready,
            _PILOT_END: self._pilot_end,
            _NODE_FAIL: self._node_fail,
            _IDLE: self._idle,
            _ARRIVE: self._arrive,
            _CYCLE: self._cycle,
            _SAMPLE: self._sample,
        }

    # --- running ------------------------------------------------------------------------------

    def _push(self, t: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._events, (t, kind, self._seq, payload))
        self._seq += 1

    def run(self) -> Tally:
        sc = self.sc
        for i, w in enumerate(sc.work):
            for _ in range(w.count + w.keep_idle):
                self._submit(i)
            if w.rate_per_h > 0:
                self._push(self._work_rng[i].expovariate(w.rate_per_h / 3600), _ARRIVE, i)
        for site in self.sites:
            self._push(0.0, _CYCLE, site)
        self._push(0.0, _SAMPLE, None)
        end = sc.duration_s
        # Events free what they drop by reference counting (they make no reference cycles), so
        # the cyclic collector only rescans the ever larger heap of live jobs: paused while it runs.
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._loop(end)
        finally:
            if collecting:
                gc.enable()
        self._close(end)
        return self.tally

    def _loop(self, end: float) -> None:
        events, handlers = self._events, self._handlers
        while events and events[0][0] <= end:
            t, kind, _, payload = heapq.heappop(events)
            self.now = t
            handlers[kind](payload)
            while self._offer_due:
                self._offer_due = False
                self._offer()

    def _close(self, end: float) -> None:
        """Pilots still running at the end count up to the end (no draining: they have not ended)."""
        t = self.tally
        for site in self.sites:
            for p in site.live.values():
                t.allocated_core_s += p.pool.total_slots * (end - p.start)
                t.busy_core_s += sum(j.cand.cpus * (end - t0) for j, _, t0, _ in p.running.values())
        for job in self.jobs.values():
            if job.first_start < 0:  # still waiting: its wait so far counts
                self._record_wait(job, end - job.submit_t)

    # --- jobs ---------------------------------------------------------------------------------

    def _submit(self, work: int) -> None:
        w = self.sc.work[work]
        runtime = self._draw[work]()
        if runtime < 1.0:
            runtime = 1.0
        wall = self._fixed_wall[work] or w.walltime_for(runtime)
        shape = self._shape_of[work].get(wall)
        if shape is None:
            shape = self._new_shape(work, wall)
        jid = self._next_job
        self._next_job = jid + 1
        key, need = shape
        job = Job(_candidate((jid, w.cpus, w.memory_mb, w.gpus, w.disk_mb, wall)), work, key, need, runtime, self.now)
        self.jobs[jid] = job
        if self.queue.add(job, self.now):
            self._offer_due = True

    def _new_shape(self, work: int, wall: int) -> tuple[ShapeKey, Need]:
        w = self.sc.work[work]
        key = (w.priority, w.cpus, w.memory_mb, w.gpus, w.disk_mb, wall, w.sites)
        shape = self._shape_of[work][wall] = (key, Need(w.cpus, w.memory_mb, w.gpus, w.disk_mb, wall))
        if wall > self.drain_window_s:
            self.drain_window_s = float(wall)
        return shape

    def _enqueue(self, job: Job) -> None:
        if self.queue.add(job, self.now):
            self._offer_due = True

    def _arrive(self, work: int) -> None:
        self._submit(work)
        rate = self.sc.work[work].rate_per_h
        self._push(self.now + self._work_rng[work].expovariate(rate / 3600), _ARRIVE, work)

    def _offer(self) -> None:
        """A new kind of job appeared: pilots with free cores claim again (their long poll answers)."""
        for site in self.sites:
            for pid in sorted(site.hungry):
                if pid in site.live:
                    self._claim(site.live[pid])

    def _record_wait(self, job: Job, wait: float) -> None:
        self._waits[job.work].append(wait)

    # --- the server's claim and the pilot's start ---------------------------------------------

    def _claim(self, p: Pilot) -> None:
        if p.stopping or p.state is not _RUNNING:
            return
        site = p.site
        lifetime = p.end - self.now - site.end_margin_s
        pool = p.pool
        free_slots = pool.free_slots
        if free_slots <= 0 or lifetime < 1:
            site.hungry.discard(p.id)
            return
        self.tally.claims += 1
        queue, name = self.queue, site.name
        reserve = None
        if self.reservations is not None and queue.multicore:  # (a hold is for an idle multicore job)
            waiting = MulticoreWaiting(queue, name)  # read only if the pilot may begin a hold
            reserve = self.reservations.for_pilot(p.id, waiting, site.total, lifetime, self.now)
        free_gpus, mem, disk = pool.free_gpus, p.mem_free, p.disk_free
        cands = queue.candidates(name, free_slots, mem, free_gpus, disk, lifetime)
        chosen: list[Job] = []
        if cands:
            ids = select(
                cands,
                _capacity(free_slots, mem, free_gpus, disk),
                site.total,
                lifetime,
                0,
                policy=self.rules.match,
                reserve=reserve,
                runtime_ratio=self.ratio,
            )
            if ids:
                jobs = self.jobs
                chosen = [jobs[ids[0]]] if len(ids) == 1 else [jobs[i] for i in ids]
                # Only an idle multicore job is ever held for: without one, no hold can end here.
                if self.reservations is not None and queue.multicore and len(self.reservations) > 0:
                    self._take_held(p, chosen)
                else:
                    for job in chosen:
                        queue.take(job)
                self._start(p, chosen, lifetime)
        if not p.running and leaves(lifetime, len(chosen), self.rules.match) and queue.too_long(name, lifetime):
            self.tally.pilots_retired += 1
            self._exit(p)
            return
        if pool.free_slots > 0:
            site.hungry.add(p.id)
        else:
            site.hungry.discard(p.id)
        if chosen:  # the workloads kept under pressure refill the queue
            by_work, keep = queue.by_work, self._keep_idle
            for work in (chosen[0].work,) if len(chosen) == 1 else {j.work for j in chosen}:
                while by_work[work] < keep[work]:
                    self._submit(work)

    def _take_held(self, p: Pilot, chosen: list[Job]) -> None:
        """The claimed jobs leave the queue while some pilot holds cores: the hold for any of them ends."""
        res = self.reservations
        assert res is not None
        for job in chosen:
            self.queue.take(job)
            holder = res.holder(job.id)
            res.claimed(job.id)
            if holder is not None and holder != p.id and holder in p.site.live:
                p.site.hungry.add(holder)  # its hold ended: it fills its cores again
                self._offer_due = True

    def _start(self, p: Pilot, claimed: list[Job], lifetime: float) -> None:
        """The pilot starts what it claimed (:func:`plan_starts`); what it does not start goes back."""
        pool, now = p.pool, self.now
        needs = [claimed[0].need] if len(claimed) == 1 else list(map(_need, claimed))
        start, _ = plan_starts(needs, pool.free_slots, pool.free_gpus, p.mem_free, p.disk_free, lifetime)
        if len(start) < len(claimed):  # the others go back to the queue
            started = set(start)
            for i, job in enumerate(claimed):
                if i not in started:
                    self.tally.given_back += 1
                    self._enqueue(job)
        site, tally, fail, waits = p.site, self.tally, self._fail, self._waits
        for i in start:
            job = claimed[i]
            c = job.cand
            cpus = c.cpus
            alloc = pool.allocate(cpus, c.gpus)
            if alloc is None:  # plan_starts counted what is free; this would be a bug in the simulator
                raise RuntimeError("plan_starts chose a job the slot pool cannot hold")
            p.mem_free -= c.memory_mb
            p.disk_free -= c.disk_mb
            tally.attempts += 1
            if job.first_start < 0:
                job.first_start = now
                waits[job.work].append(now - job.submit_t)
            failing = fail[job.work]
            if p.black_hole:  # the node cannot run jobs: the pilot fails them within seconds
                duration, outcome = site.rng.uniform(1.0, 5.0), _INTERRUPTED
            elif failing and site.rng.random() < failing:
                duration, outcome = site.rng.uniform(0.0, job.runtime_s), _FAILED
            else:
                duration, outcome = job.runtime_s, _DONE
            p.running[job.id] = (job, alloc, now, outcome)
            site.busy_cores += cpus
            self._busy += cpus
            heapq.heappush(self._events, (now + duration, _JOB_END, self._seq, (p, job, p.gen)))
            self._seq += 1

    def _release(self, p: Pilot, job: Job, alloc: Allocation, t0: float) -> None:
        """The pilot's bookkeeping when one of its jobs ends."""
        c, now = job.cand, self.now
        cpus = c.cpus
        p.pool.release(alloc)
        p.mem_free += c.memory_mb
        p.disk_free += c.disk_mb
        p.site.busy_cores -= cpus
        self._busy -= cpus
        p.runs.append((t0, now, cpus))
        self.tally.busy_core_s += cpus * (now - t0)
        if not p.running:
            p.idle_since = now
            self._push(now + p.site.idle_timeout_s, _IDLE, (p, p.gen))

    def _job_end(self, payload: tuple[Pilot, Job, int]) -> None:
        p, job, gen = payload
        if gen != p.gen:
            return
        entry = p.running.pop(job.id, None)
        if entry is None:
            return
        _, alloc, t0, outcome = entry
        self._release(p, job, alloc, t0)
        t = self.tally
        spec = p.site.spec.pilot
        if outcome is _DONE:
            t.jobs_done += 1
            self._done_runs.append((self.now - t0, job.cand.walltime_s))
            del self.jobs[job.id]
        else:
            t.lost_core_s += job.cand.cpus * (self.now - t0)
            if p.black_hole:
                t.black_hole_failures += 1
            else:
                t.job_failures += 1
            self._retry_or_fail(job, outcome)
        p.streak = failure_streak(p.streak, outcome, self.now - t0, spec.fast_failure_s)
        if p.streak >= spec.black_hole_failures and not p.stopping:
            p.stopping = True
            t.pilots_black_hole += 1
        if p.stopping:
            if not p.running:
                self._exit(p)
            return
        self._claim(p)

    def _retry_or_fail(self, job: Job, outcome: Outcome) -> None:
        """What the store does with an attempt that ended without success: the lifecycle's plan."""
        budget = None
        if needs_budget(outcome):
            c = job.cand
            spec = JobSpec(cpus=c.cpus, memory_mb=c.memory_mb, gpus=c.gpus, disk_mb=c.disk_mb, walltime_s=c.walltime_s)
            budget = RetryBudget(job.retries, self.sc.work[job.work].max_retries, spec)
        plan = plan_attempt_end(outcome, None, budget, self._retry_policy)
        if plan.step is _FAIL:
            self.tally.jobs_failed += 1
            del self.jobs[job.id]
            return
        if plan.step is _RETRY:
            job.retries += 1
            self.tally.retries += 1
        self._enqueue(job)

    # --- pilots -------------------------------------------------------------------------------

    def _cycle(self, site: Site) -> None:
        """One site-client cycle: the server's demand, then the client's decision."""
        now, spec = self.now, site.spec
        margin = spec.pilot.end_margin_s
        free = [
            FreeCapacity(p.pool.free_slots, p.mem_free, p.pool.free_gpus, p.disk_free, p.end - now - margin)
            for p in (site.live[i] for i in site.hungry if i in site.live)
        ]
        demand = site_demand(spec.name, self.queue.shapes(), self.site_shapes, free)
        # Running pilots only count against max_pilots (decide never removes them), so handing decide
        # the waiting pilots and a max_pilots net of the running ones gives the same numbers, faster.
        limits = msgspec.structs.replace(site.limits, max_pilots=max(0, spec.max_pilots - len(site.live)))
        pilots = [p.job for p in site.waiting.values()]
        decision = decide(demand.pilots, pilots, limits, now=now, max_queued_s=spec.max_queued_s)
        for batch_id in decision.remove:
            gone = site.waiting.pop(int(batch_id), None)
            if gone is not None:
                gone.state = _CANCELLED
        for _ in range(decision.submit):
            p = Pilot(self._next_pilot, site, now)
            self._next_pilot += 1
            site.waiting[p.id] = p
            self._push(now + max(0.0, spec.queue_wait.draw(site.rng)), _PILOT_READY, p)
        self._push(now + spec.cycle_s, _CYCLE, site)

    def _pilot_ready(self, p: Pilot) -> None:
        if p.state is not _QUEUED:
            return
        site = p.site
        if len(site.live) >= site.spec.slots:
            site.ready.append(p)
        else:
            self._start_pilot(p)

    def _start_pilot(self, p: Pilot) -> None:
        site, now = p.site, self.now
        spec = site.spec.pilot
        site.waiting.pop(p.id, None)
        p.state = _RUNNING
        p.job = PilotJob(str(p.id), p.id, _RUNNING, submitted_at=p.submitted)
        p.pool = SlotPool(spec.cpus, tuple(f"gpu{i}" for i in range(spec.gpus)))
        p.mem_free, p.disk_free = spec.memory_mb, spec.disk_mb
        p.start, p.end, p.idle_since = now, now + spec.walltime_s, now
        p.black_hole = site.rng.random() < site.spec.black_hole_fraction
        site.live[p.id] = p
        site.alloc_cores += spec.cpus
        self._alloc += spec.cpus
        self.tally.pilots += 1
        if self.tally.ramp_alloc_s is None and self._alloc >= self.ramp_cores:
            self.tally.ramp_alloc_s = now
        self._push(p.end - spec.end_margin_s, _PILOT_END, (p, p.gen))
        self._push(now + spec.idle_timeout_s, _IDLE, (p, p.gen))
        if site.spec.node_mtbf_s > 0:
            fail_in = site.rng.expovariate(1.0 / site.spec.node_mtbf_s)
            if fail_in < spec.walltime_s:
                self._push(now + fail_in, _NODE_FAIL, (p, p.gen))
        self._claim(p)

    def _interrupt_all(self, p: Pilot) -> None:
        """The pilot's jobs end without a result (its end came, or its node failed): back to the queue."""
        for job_id in list(p.running):
            job, alloc, t0, _ = p.running.pop(job_id)
            self._release(p, job, alloc, t0)
            self.tally.lost_core_s += job.cand.cpus * (self.now - t0)
            self.tally.interrupted += 1
            self._retry_or_fail(job, _INTERRUPTED)

    def _pilot_end(self, payload: tuple[Pilot, int]) -> None:
        p, gen = payload
        if gen == p.gen and p.state is _RUNNING:
            self._interrupt_all(p)
            self._exit(p)

    def _node_fail(self, payload: tuple[Pilot, int]) -> None:
        p, gen = payload
        if gen == p.gen and p.state is _RUNNING:
            self.tally.pilots_failed += 1
            self._interrupt_all(p)
            self._exit(p)

    def _idle(self, payload: tuple[Pilot, int]) -> None:
        p, gen = payload
        timeout = p.site.spec.pilot.idle_timeout_s
        if gen == p.gen and p.state is _RUNNING and not p.running and self.now - p.idle_since >= timeout:
            self._exit(p)

    def _exit(self, p: Pilot) -> None:
        site, now = p.site, self.now
        cpus = p.pool.total_slots
        p.gen += 1
        p.state = _ENDED
        site.live.pop(p.id, None)
        site.hungry.discard(p.id)
        site.alloc_cores -= cpus
        self._alloc -= cpus
        life = now - p.start
        window = min(self.drain_window_s, life)
        since = now - window
        busy = sum(c * (e - max(s, since)) for s, e, c in p.runs if e > since)
        self.tally.allocated_core_s += cpus * life
        self.tally.drain_idle_core_s += cpus * window - busy
        p.runs = []
        if self.reservations is not None:
            self.reservations.gone(p.id)
        while site.ready and len(site.live) < site.spec.slots:
            nxt = site.ready.pop(0)
            if nxt.state is _QUEUED:
                self._start_pilot(nxt)

    def _sample(self, _: None) -> None:
        self.ratio = runtime_ratio(self._done_runs)
        tl = self.timeline
        tl.t.append(self.now)
        for site in self.sites:
            tl.allocated[site.spec.name].append(site.alloc_cores)
            tl.busy[site.spec.name].append(site.busy_cores)
        if self.tally.ramp_busy_s is None and self._busy >= self.ramp_cores:
            self.tally.ramp_busy_s = self.now
        self._push(self.now + self.sc.sample_s, _SAMPLE, None)


def simulate(sc: Scenario, rules: Rules) -> Simulation:
    sim = Simulation(sc, rules)
    sim.run()
    if sim.reservations is not None:
        sim.tally.reservations = sim.reservations.made
    return sim
