"""The pure rules of hold, release and retry with new requirements (glidein_server.policy.lifecycle)."""

from __future__ import annotations

import pytest

from glidein_client.wire.errors import ConflictError
from glidein_client.wire.schema import JobChange, JobSpec, JobState, RetryRequest
from glidein_server.policy.lifecycle import check_release, check_retry, plan_hold, retried_spec


@pytest.mark.parametrize("state", [JobState.IDLE, JobState.CLAIMED, JobState.RUNNING])
def test_live_jobs_are_held(state: JobState) -> None:
    assert plan_hold(7, state) is True


def test_a_held_job_is_left_as_it_is() -> None:
    assert plan_hold(7, JobState.HELD) is False


@pytest.mark.parametrize("state", [JobState.DONE, JobState.FAILED, JobState.CANCELLED])
def test_a_finished_job_cannot_be_held_and_the_error_names_its_state(state: JobState) -> None:
    with pytest.raises(ConflictError, match=f"Job 7 is {state.value}; only idle or running jobs can be held") as e:
        plan_hold(7, state)
    assert e.value.hint is not None and "glidein retry 7" in e.value.hint


def test_release_needs_a_held_job_whose_attempt_has_ended() -> None:
    check_release(7, JobState.HELD, winding_down=False)
    with pytest.raises(ConflictError, match="only held jobs"):
        check_release(7, JobState.IDLE, winding_down=False)
    with pytest.raises(ConflictError, match="still being stopped"):
        check_release(7, JobState.HELD, winding_down=True)


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.CANCELLED, JobState.HELD])
def test_retry_takes_failed_cancelled_and_held_jobs(state: JobState) -> None:
    check_retry(7, state, winding_down=False)


@pytest.mark.parametrize("state", [JobState.IDLE, JobState.RUNNING, JobState.DONE])
def test_retry_refuses_other_states(state: JobState) -> None:
    with pytest.raises(ConflictError, match=f"Job 7 is {state.value}"):
        check_retry(7, state, winding_down=False)


def test_retried_spec_changes_only_what_is_given_and_lists_old_and_new() -> None:
    spec = JobSpec(argv=["x"], cpus=1, memory_mb=1024, walltime_s=600, sites=["a"])
    new, changes = retried_spec(spec, RetryRequest(memory_mb=4096, cpus=1, sites=["c", "b", "c"]))
    assert (new.cpus, new.memory_mb, new.walltime_s, new.sites, new.argv) == (1, 4096, 600, ["b", "c"], ["x"])
    assert changes == [
        JobChange(field="memory_mb", old=1024, new=4096),
        JobChange(field="sites", old=["a"], new=["b", "c"]),
    ]


def test_an_empty_site_list_lets_the_job_run_anywhere_again() -> None:
    new, changes = retried_spec(JobSpec(argv=["x"], sites=["a"]), RetryRequest(sites=[]))
    assert new.sites is None and changes == [JobChange(field="sites", old=["a"], new=None)]


def test_a_retry_without_requirements_changes_nothing() -> None:
    spec = JobSpec(argv=["x"])
    assert retried_spec(spec, RetryRequest(reason="flaky node")) == (spec, [])
