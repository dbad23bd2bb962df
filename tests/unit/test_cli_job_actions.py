"""Parsing of ``glidein hold|release|retry|cancel|fetch|wait``: ids, ``--label`` and a retry's new requirements."""

from __future__ import annotations

import pytest

from glidein_client.user import cli, history
from glidein_client.user.commands.change import _patiently, retry_request
from glidein_client.wire.api import _error_from
from glidein_client.wire.errors import ConflictError, ValidationError
from glidein_client.wire.schema import JobChange, JobEvent, JobSpec, JobState, JobView, RetryRequest


@pytest.mark.parametrize("command", ["cancel", "retry", "hold", "release", "fetch"])
def test_ids_or_a_label_are_needed(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.parse_args([command])
    assert e.value.code == 2
    assert f"glidein {command}: error: give job ids" in capsys.readouterr().err
    args = cli.parse_args([command, "--label", "dataset=a", "--label", "kind=reco"])
    assert (args.ids, args.label) == ([], ["dataset=a", "kind=reco"])


def test_a_label_must_be_key_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse_args(["hold", "--label", "dataset"])
    assert "'dataset' is not KEY=VALUE" in capsys.readouterr().err


def test_hold_takes_a_reason() -> None:
    args = cli.parse_args(["hold", "3-4", "--reason", "disk full"])
    assert (args.ids, args.reason, args.label) == ([3, 4], "disk full", None)


def test_retry_flags_become_new_requirements() -> None:
    args = cli.parse_args(["retry", "7", "--memory", "4G", "--walltime", "2h", "--cpus", "2", "--site", "big"])
    assert retry_request(args) == RetryRequest(memory_mb=4096, walltime_s=7200, cpus=2, sites=["big"])
    args = cli.parse_args(["retry", "7", "--site", "any"])
    assert retry_request(args) == RetryRequest(sites=[])
    assert retry_request(cli.parse_args(["retry", "7"])) == RetryRequest()


def test_retry_limits_are_checked_as_a_submits_are() -> None:
    with pytest.raises(ValidationError, match="walltime_s"):
        retry_request(cli.parse_args(["retry", "7", "--walltime", "40d"]))
    with pytest.raises(ValidationError, match="cpus"):
        retry_request(cli.parse_args(["retry", "7", "--cpus", "5000"]))


def test_history_reads_as_who_did_what_and_what_changed() -> None:
    job = JobView(
        id=1,
        owner="ann",
        state=JobState.IDLE,
        spec=JobSpec(argv=["x"]),
        submitted_at=0.0,
        history=[
            JobEvent(at=0.0, action="held", by="ann", reason="disk full"),
            JobEvent(
                at=0.0,
                action="retried",
                by="op",
                changes=[
                    JobChange(field="memory_mb", old=1024, new=4096),
                    JobChange(field="sites", old=["a"], new=None),
                ],
            ),
        ],
    )
    lines = history.history_lines(job)
    assert lines[0] == "history:"
    assert lines[1].endswith(" held by ann: disk full")
    assert lines[2].endswith(" retried by op (memory 1G -> 4G, sites a -> any)")


def test_a_conflict_names_its_field_to_the_client() -> None:
    exc = _error_from(409, b'{"error": "Job 5 is still being stopped on its pilot.", "field": "attempts"}', "u")
    assert isinstance(exc, ConflictError) and exc.fields["field"] == "attempts"
    assert "field" not in _error_from(409, b'{"error": "x"}', "u").fields


async def test_release_waits_while_the_stopped_attempt_ends_and_no_longer() -> None:
    calls: list[int] = []
    view = JobView(id=5, owner="ann", state=JobState.IDLE, spec=JobSpec(argv=["x"]), submitted_at=0.0)

    async def release(job_id: int) -> JobView:
        calls.append(job_id)
        if len(calls) < 3:
            raise ConflictError("Job 5 is still being stopped on its pilot.", field="attempts")
        return view

    assert await _patiently(release, 5) == view and calls == [5, 5, 5]

    async def not_held(job_id: int) -> JobView:
        calls.append(job_id)
        raise ConflictError("Job 5 is idle; only held jobs can be released.")

    calls.clear()
    with pytest.raises(ConflictError, match="only held jobs"):
        await _patiently(not_held, 5)
    assert calls == [5]  # asked once: waiting would not change it
