"""The job lifecycle: what the end of an attempt does to its job and to its site.

Pure functions over plain data; a store reads the few facts they need, calls them, and
applies the plan they return (in the same transaction). Nothing here touches a database.

- ``plan_attempt_end``: an attempt's outcome becomes a job step: done; retried (charged to the
  job's retries, its memory or walltime grown when that killed it); requeued without charge
  (the pilot ended, the lease was lost); failed when its retries are spent; or left alone
  (cancelled jobs stay cancelled).
- ``site_health_blend``: a site's health is a moving average of attempt success (1) and failure
  (0); jobs interrupted by a pilot's end or cancelled say nothing about the site, a lost pilot does.
- ``claim_lost``: a claim that a pilot's sync does not list as held was lost on the way, unless
  that sync was sent before the claim's answer came back (a stale sync that arrived late).
- ``site_backoff``: after pilots fail at start several times in a row, a site waits before
  submitting more (1 min, doubling, up to 1 h).
- ``plan_hold``, ``check_release``, ``check_retry`` and ``retried_spec``: what a user's hold,
  release and retry (with new requirements) may do to a job, as condor_hold/condor_release do.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import msgspec

from glidein_client.wire.errors import ConflictError
from glidein_client.wire.schema import Finish, JobChange, JobEvent, JobSpec, JobState, Outcome, RetryRequest
from glidein_server.policy.demand import start_backoff_s
from glidein_server.policy.retry import RetryPolicy, next_spec, retries_allowed

#: How an attempt's outcome moves its site's health; outcomes not listed leave it alone.
SITE_HEALTH: Mapping[Outcome, float] = {
    Outcome.DONE: 1.0,
    Outcome.FAILED: 0.0,
    Outcome.MEMORY: 0.0,
    Outcome.WALLTIME: 0.0,
    Outcome.LOST: 0.0,
}
#: Weight of one outcome in the site-health moving average.
HEALTH_ALPHA = 0.05
#: The history action of a retry whose request the lifecycle grew, by whom, and what it may grow.
GROWN, GROWN_BY = "grown", "server"
GROWN_FIELDS = ("memory_mb", "walltime_s")


class Step(str, enum.Enum):
    """What happens to a job when one of its attempts ends."""

    DONE = "done"  # finished; the attempt's outputs are the job's result
    RETRY = "retry"  # idle again, one retry charged (``grown`` set when it asks for more)
    REQUEUE = "requeue"  # idle again, not charged: not the job's fault
    FAIL = "fail"  # failed for good: its retries are spent
    KEEP = "keep"  # left as it is (a cancelled job stays cancelled)


@dataclass(frozen=True)
class RetryBudget:
    """What the lifecycle needs to know about a job whose attempt failed."""

    retries_used: int
    max_retries: int
    spec: JobSpec
    asked: Mapping[str, int] = field(default_factory=dict)  # what the user asked before earlier growths


@dataclass(frozen=True)
class JobPlan:
    """The job's next state after an attempt, for the store to apply."""

    step: Step
    reason: str | None
    grown: JobSpec | None = None  # RETRY only: the larger request of the next attempt
    changes: tuple[JobChange, ...] = ()  # with ``grown``: each requirement grown, for the job's history


def needs_budget(outcome: Outcome) -> bool:
    """Whether ``plan_attempt_end`` needs the job's ``RetryBudget`` for this outcome."""
    return outcome.counts_as_retry


def plan_attempt_end(
    outcome: Outcome, reason: str | None, budget: RetryBudget | None, policy: RetryPolicy, *, peak_mb: float = 0.0
) -> JobPlan:
    """The job step for an attempt that ended with ``outcome``; ``budget`` is None for a job that
    no longer exists (or when ``needs_budget`` is False); ``peak_mb`` the memory it was measured using."""
    if outcome is Outcome.DONE:
        return JobPlan(Step.DONE, None)
    if outcome is Outcome.CANCELLED:
        return JobPlan(Step.KEEP, reason)
    if not outcome.counts_as_retry:
        return JobPlan(Step.REQUEUE, reason)
    if budget is None or budget.retries_used >= retries_allowed(outcome, budget.max_retries, policy):
        return JobPlan(Step.FAIL, reason)
    original = msgspec.structs.replace(
        budget.spec,
        memory_mb=budget.asked.get("memory_mb", budget.spec.memory_mb),
        walltime_s=budget.asked.get("walltime_s", budget.spec.walltime_s),
    )
    grown = next_spec(budget.spec, outcome, policy, peak_mb=peak_mb, original=original)
    if grown is None:
        return JobPlan(Step.RETRY, reason)
    spec, note = grown
    changes = tuple(
        JobChange(field=name, old=getattr(budget.spec, name), new=getattr(spec, name))
        for name in GROWN_FIELDS
        if getattr(spec, name) != getattr(budget.spec, name)
    )
    return JobPlan(Step.RETRY, f"{reason}; {note}", grown=spec, changes=changes)


def asked_of(history: Iterable[JobEvent]) -> dict[str, int]:
    """The user's own request of each requirement a retry grew (``{"memory_mb": 100}``), from the
    job's history: a growth remembers what was asked before it, a retry by request that sets the
    requirement again makes that the user's own."""
    asked: dict[str, int] = {}
    for event in history:
        for change in event.changes:
            if event.action == GROWN:
                if isinstance(change.old, int):
                    asked.setdefault(change.field, change.old)
            else:
                asked.pop(change.field, None)
    return asked


def check_outputs(fin: Finish, uploaded: Mapping[str, tuple[str, int]]) -> tuple[Outcome, str | None]:
    """A DONE report whose declared outputs were not all uploaded intact is a failure."""
    if fin.outcome is not Outcome.DONE or not fin.outputs:
        return fin.outcome, fin.reason
    missing = [o.name for o in fin.outputs if uploaded.get(o.name) != (o.sha256, o.size)]
    if not missing:
        return fin.outcome, fin.reason
    return Outcome.FAILED, f"outputs {', '.join(missing)} were reported but not uploaded intact"


def site_health_value(outcome: Outcome) -> float | None:
    """What one attempt's outcome says about its site, or None when it says nothing."""
    return SITE_HEALTH.get(outcome)


def site_health_blend(values: Iterable[float]) -> tuple[float, float]:
    """``(keep, add)`` such that ``health * keep + add`` equals one moving-average update per value, in order."""
    keep, add = 1.0, 0.0
    for value in values:
        keep *= 1 - HEALTH_ALPHA
        add = add * (1 - HEALTH_ALPHA) + HEALTH_ALPHA * value
    return keep, add


def claim_lost(claim_seq: int | None, sync_seq: int | None) -> bool:
    """Whether a claim answered to the pilot's sync ``claim_seq``, and not held by its sync ``sync_seq``,
    was lost on the way. Only a sync sent after that answer came back (a higher number: the pilot
    lists what it holds only once every earlier sync has come back or been given up) can tell; a
    stale sync that arrives late says nothing of it. Without numbers (earlier pilots, or claims made
    before the server numbered them) the omission alone counts, as it always did."""
    if sync_seq is None or claim_seq is None:
        return True
    return claim_seq < sync_seq


def site_backoff(failures: int, last_failure_at: float | None, now: float) -> tuple[int, float]:
    """``(start failures in a row, seconds the site should still wait)``."""
    if not failures:
        return 0, 0.0
    left = start_backoff_s(failures) - (now - (last_failure_at or now))
    return failures, round(max(0.0, left), 1)


def pilot_start_failed(previous_state: str) -> bool:
    """A pilot the batch system reports ended while still pending never reached the server: it
    counts as a failure to start at its site."""
    return previous_state == "pending"


#: States a hold takes a job from (a running job is stopped on its pilot, as a cancel is).
HOLDABLE = (JobState.IDLE, JobState.CLAIMED, JobState.RUNNING)
#: States a retry by request puts back in the queue.
RETRYABLE = (JobState.FAILED, JobState.CANCELLED, JobState.HELD)
#: The ``field`` of the ConflictError for a job whose stopped attempt has not ended yet (clients wait and ask again).
WINDING_DOWN = "attempts"
#: The requirements a retry may change, in the order its history lists them.
RETRY_FIELDS = ("cpus", "memory_mb", "gpus", "walltime_s", "sites")


def plan_hold(job_id: int, state: JobState) -> bool:
    """Whether holding the job changes it (False: it is held already); ConflictError for a finished job."""
    if state is JobState.HELD:
        return False
    if state not in HOLDABLE:
        raise ConflictError(
            f"Job {job_id} is {state.value}; only idle or running jobs can be held.",
            hint=f"A {state.value} job is not in the queue; `glidein retry {job_id}` runs it again.",
        )
    return True


def check_release(job_id: int, state: JobState, winding_down: bool) -> None:
    """Only a held job is released, and only once its stopped attempt has ended on its pilot."""
    if state is not JobState.HELD:
        raise ConflictError(f"Job {job_id} is {state.value}; only held jobs can be released.")
    if winding_down:
        raise ConflictError(
            f"Job {job_id} is still being stopped on its pilot.",
            hint="Release it again in a few seconds.",
            field=WINDING_DOWN,
        )


def check_retry(job_id: int, state: JobState, winding_down: bool) -> None:
    """Only failed, cancelled or held jobs run again, once no attempt of theirs is still ending."""
    if state not in RETRYABLE:
        raise ConflictError(f"Job {job_id} is {state.value}; only failed, cancelled or held jobs can be retried.")
    if winding_down:
        raise ConflictError(
            f"Job {job_id} still has an attempt winding down.",
            hint="Retry it again in a few seconds.",
            field=WINDING_DOWN,
        )


def retried_spec(spec: JobSpec, req: RetryRequest) -> tuple[JobSpec, list[JobChange]]:
    """The job's request after a retry that sets new requirements, and each change (old -> new)."""
    changes: list[JobChange] = []
    new: dict[str, object] = {}
    for name in RETRY_FIELDS:
        want = getattr(req, name)
        if want is None:
            continue
        if name == "sites":
            want = sorted(set(want)) or None  # [] = any site again
        old = getattr(spec, name)
        if want != old:
            new[name] = want
            changes.append(JobChange(field=name, old=old, new=want))
    return (msgspec.structs.replace(spec, **new) if new else spec), changes
