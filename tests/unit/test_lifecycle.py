"""The job lifecycle as pure functions: an attempt's outcome becomes a plan for its job and site."""

from __future__ import annotations

import msgspec
import pytest

from glidein_client.wire.schema import Finish, JobChange, JobEvent, JobSpec, Outcome, OutputFile
from glidein_server.policy.lifecycle import (
    GROWN,
    HEALTH_ALPHA,
    RetryBudget,
    Step,
    asked_of,
    check_outputs,
    claim_lost,
    needs_budget,
    pilot_start_failed,
    plan_attempt_end,
    site_backoff,
    site_health_blend,
    site_health_value,
)
from glidein_server.policy.retry import RetryPolicy

SPEC = JobSpec(argv=["true"], memory_mb=1000, walltime_s=600)
POLICY = RetryPolicy(memory_factor=2.0, max_memory_mb=3000, walltime_factor=2.0, max_walltime_s=1000)


def test_done_and_cancelled() -> None:
    assert plan_attempt_end(Outcome.DONE, "x", None, POLICY).step is Step.DONE
    assert plan_attempt_end(Outcome.CANCELLED, "x", None, POLICY).step is Step.KEEP


@pytest.mark.parametrize("outcome", [Outcome.INTERRUPTED, Outcome.LOST])
def test_not_the_jobs_fault_requeues_without_charge(outcome: Outcome) -> None:
    assert not needs_budget(outcome)
    plan = plan_attempt_end(outcome, "pilot ended", RetryBudget(3, 3, SPEC), POLICY)
    assert (plan.step, plan.reason, plan.grown) == (Step.REQUEUE, "pilot ended", None)


def test_failure_retries_until_spent() -> None:
    assert needs_budget(Outcome.FAILED)
    plan = plan_attempt_end(Outcome.FAILED, "exit 1", RetryBudget(0, 1, SPEC), POLICY)
    assert (plan.step, plan.reason, plan.grown) == (Step.RETRY, "exit 1", None)
    plan = plan_attempt_end(Outcome.FAILED, "exit 1", RetryBudget(1, 1, SPEC), POLICY)
    assert plan.step is Step.FAIL
    assert plan_attempt_end(Outcome.FAILED, "gone", None, POLICY).step is Step.FAIL


def test_memory_and_walltime_grow_up_to_the_cap() -> None:
    plan = plan_attempt_end(Outcome.MEMORY, "killed", RetryBudget(0, 5, SPEC), POLICY)
    assert plan.step is Step.RETRY and plan.grown is not None
    assert plan.grown.memory_mb == 2000
    assert plan.reason == "killed; retrying with 2000 MB of memory (asked for 1000 MB)"
    plan = plan_attempt_end(Outcome.WALLTIME, "slow", RetryBudget(0, 5, SPEC), POLICY)
    assert plan.grown is not None and plan.grown.walltime_s == 1000
    at_cap = RetryBudget(0, 5, plan.grown)
    plan = plan_attempt_end(Outcome.WALLTIME, "slow", at_cap, POLICY)
    assert (plan.step, plan.grown) == (Step.RETRY, None)


def test_a_memory_retry_asks_for_the_measured_peak_and_a_margin() -> None:
    small = msgspec.structs.replace(SPEC, memory_mb=100)
    plan = plan_attempt_end(
        Outcome.MEMORY, "used 611 MB, more than its 100 MB", RetryBudget(0, 0, small), POLICY, peak_mb=611
    )
    assert plan.step is Step.RETRY and plan.grown is not None
    assert plan.grown.memory_mb == 764  # 611 MB + 25 %, not 150 MB
    assert plan.reason == (
        "used 611 MB, more than its 100 MB; retrying with 764 MB of memory (asked for 100 MB, used 611 MB)"
    )


def test_the_jobs_own_failures_are_not_retried_by_default_but_resizing_is() -> None:
    default = RetryBudget(0, JobSpec(argv=["x"]).max_retries, SPEC)
    assert plan_attempt_end(Outcome.FAILED, "exit 1", default, POLICY).step is Step.FAIL
    assert plan_attempt_end(Outcome.MEMORY, "killed", default, POLICY).step is Step.RETRY
    spent = RetryBudget(POLICY.resize_retries, 0, SPEC)
    assert plan_attempt_end(Outcome.MEMORY, "killed", spent, POLICY).step is Step.FAIL


def test_outputs_reported_but_not_uploaded_fail_the_attempt() -> None:
    out = OutputFile(name="a.txt", sha256="0" * 64, size=3)
    fin = Finish(attempt_id=1, lease="l", outcome=Outcome.DONE, outputs=[out])
    assert check_outputs(fin, {"a.txt": ("0" * 64, 3)}) == (Outcome.DONE, None)
    outcome, reason = check_outputs(fin, {"a.txt": ("0" * 64, 4)})
    assert outcome is Outcome.FAILED and reason is not None and "a.txt" in reason


def test_site_health_blend_equals_one_update_per_outcome() -> None:
    values = [site_health_value(o) for o in (Outcome.DONE, Outcome.FAILED, Outcome.LOST, Outcome.DONE)]
    assert site_health_value(Outcome.INTERRUPTED) is None and site_health_value(Outcome.CANCELLED) is None
    health = 0.7
    for v in values:
        assert v is not None
        health = health * (1 - HEALTH_ALPHA) + HEALTH_ALPHA * v
    keep, add = site_health_blend(v for v in values if v is not None)
    assert 0.7 * keep + add == pytest.approx(health)
    assert site_health_blend([]) == (1.0, 0.0)


def test_site_backoff() -> None:
    assert site_backoff(0, None, 100.0) == (0, 0.0)
    assert site_backoff(2, 90.0, 100.0) == (2, 0.0)
    assert site_backoff(3, 90.0, 100.0) == (3, 50.0)
    assert site_backoff(4, 90.0, 100.0) == (4, 110.0)
    assert site_backoff(20, 1.0, 100.0) == (20, 3501.0)
    assert pilot_start_failed("pending") and not pilot_start_failed("running")


@pytest.mark.parametrize(
    ("claim_seq", "sync_seq", "lost"),
    [
        (3, 4, True),  # a sync sent after the claim's answer came back omits it: lost
        (3, 3, False),  # the same sync (sent again): it could not know
        (5, 4, False),  # a stale sync that arrived after a newer one claimed
        (None, 4, True),  # claimed before claims were numbered
        (3, None, True),  # a pilot that numbers nothing: as before
        (None, None, True),
    ],
)
def test_claim_lost_only_by_a_later_sync(claim_seq: int | None, sync_seq: int | None, lost: bool) -> None:
    assert claim_lost(claim_seq, sync_seq) is lost


def test_a_growth_names_the_users_own_request_and_history_keeps_it() -> None:
    grown_once = msgspec.structs.replace(SPEC, memory_mb=1500)
    plan = plan_attempt_end(
        Outcome.MEMORY, "used 1400 MB", RetryBudget(1, 0, grown_once, {"memory_mb": 1000}), POLICY, peak_mb=1400
    )
    assert plan.grown is not None and plan.grown.memory_mb == 3000
    assert plan.reason == "used 1400 MB; retrying with 3000 MB of memory (asked for 1000 MB, used 1400 MB)"
    assert plan.changes == (JobChange(field="memory_mb", old=1500, new=3000),)

    def event(action: str, *changes: JobChange) -> JobEvent:
        return JobEvent(at=0.0, action=action, by="x", changes=list(changes))

    grew = [event(GROWN, JobChange(field="memory_mb", old=1000, new=1500)), event(GROWN, *plan.changes)]
    assert asked_of(grew) == {"memory_mb": 1000}  # the first growth remembers what was asked
    held = [*grew, event("held"), event("retried", JobChange(field="cpus", old=1, new=2))]
    assert asked_of(held) == {"memory_mb": 1000}
    own = [*grew, event("retried", JobChange(field="memory_mb", old=3000, new=500))]
    assert asked_of(own) == {}  # a retry that sets the memory makes it the user's own request again
