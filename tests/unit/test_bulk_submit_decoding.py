"""A bulk submit's body: decoded with Python's cycle collector paused (which comes back as it was, also
when the body is refused), and a value that no store keeps refused by name before any store sees it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from glidein_client.wire.codec import decode
from glidein_client.wire.errors import ValidationError
from glidein_client.wire.rules import check_job
from glidein_client.wire.schema import JobSpec, JobSubmit
from glidein_server.http.routing import collection_paused


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


def test_paused_inside_and_on_again_after() -> None:
    with collection_paused():
        assert not gc.isenabled()
        jobs = decode(b'{"jobs": [' + b",".join([b'{"argv": ["true"]}'] * 1000) + b"]}", JobSubmit)
    assert gc.isenabled() and len(jobs.jobs) == 1000


def test_on_again_when_the_body_is_refused() -> None:
    with pytest.raises(ValidationError, match="jobs"), collection_paused():
        decode(b'{"jobs": [{"argv": ["true"], "cpus": 0}]}', JobSubmit)
    assert gc.isenabled()


def test_a_collector_turned_off_by_the_operator_stays_off() -> None:
    gc.disable()
    with collection_paused():
        pass
    assert not gc.isenabled()


@pytest.mark.parametrize("priority", [2**31, -(2**31) - 1, 2**63])
def test_a_priority_beyond_32_bits_is_refused_by_name(priority: int) -> None:
    body = b'{"jobs": [{"argv": ["true"]}, {"argv": ["true"], "priority": %d}]}' % priority
    with pytest.raises(ValidationError, match="priority") as caught:
        decode(body, JobSubmit, what="job submission")
    assert caught.value.fields.get("field") == "jobs[1].priority"


def test_the_32_bit_priorities_are_accepted() -> None:
    body = b'{"jobs": [{"argv": ["true"], "priority": 2147483647}, {"argv": ["true"], "priority": -2147483648}]}'
    assert [j.priority for j in decode(body, JobSubmit).jobs] == [2**31 - 1, -(2**31)]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (JobSpec(argv=["echo", "a\x00b"]), "jobs[3].argv[1]"),
        (JobSpec(script="#!/bin/sh\necho \x00\n"), "jobs[3].script"),
        (JobSpec(argv=["true"], env={"X": "1\x00"}), "jobs[3].env.X"),
        (JobSpec(argv=["true"], labels={"ds": "\x00"}), "jobs[3].labels"),
        (JobSpec(argv=["true"], labels={"d\x00s": "x"}), "jobs[3].labels"),
    ],
)
def test_a_nul_character_in_a_jobs_text_is_refused_by_name(spec: JobSpec, field: str) -> None:
    with pytest.raises(ValidationError, match="NUL") as caught:
        check_job(spec, 3)
    assert caught.value.fields.get("field") == field
    assert "\x00" not in str(caught.value)


def test_text_without_nul_characters_passes() -> None:
    spec = JobSpec(argv=["echo", "\\0 is not a NUL"], env={"X": "\\u0000"}, labels={"ds": "ok"})
    assert check_job(spec, 0) is spec
