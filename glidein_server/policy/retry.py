"""What a job asks for on its next attempt, after it was killed for its memory or walltime.

Pure functions over plain data. A job killed for exceeding its memory is retried with more
memory, one killed for its walltime with more walltime, as an HTCondor user would do by hand with
``request_memory = MAX(...)`` in a retry policy: by a factor, and for memory at least the peak
the pilot measured plus a margin, up to a cap. Such resizing retries are allowed even to jobs
without retries of their own failures (``max_retries``, default 0), up to ``resize_retries``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec

from glidein_client.wire.schema import JobSpec, Outcome


@dataclass(frozen=True)
class RetryPolicy:
    memory_factor: float = 1.5
    max_memory_mb: int = 256 * 1024
    walltime_factor: float = 1.5
    max_walltime_s: int = 7 * 86400
    memory_margin: float = 0.25  # a memory retry asks for at least the measured peak plus this fraction
    resize_retries: int = 2  # retries with a grown request, whatever the job's max_retries


def retries_allowed(outcome: Outcome, max_retries: int, policy: RetryPolicy) -> int:
    """How many retries a job has for this outcome: its own for failures, more for resizing."""
    if outcome in (Outcome.MEMORY, Outcome.WALLTIME):
        return max(max_retries, policy.resize_retries)
    return max_retries


def next_spec(
    spec: JobSpec, outcome: Outcome, policy: RetryPolicy, *, peak_mb: float = 0.0, original: JobSpec | None = None
) -> tuple[JobSpec, str] | None:
    """The grown request and a note saying so, or None when the retry asks for the same.

    ``peak_mb`` is the memory the attempt was measured using; ``original`` the request as the user
    made it, named beside the grown one.
    """
    asked = original or spec
    if outcome is Outcome.MEMORY:
        grown = max(math.ceil(spec.memory_mb * policy.memory_factor), math.ceil(peak_mb * (1 + policy.memory_margin)))
        grown = min(policy.max_memory_mb, grown)
        if grown > spec.memory_mb:
            used = f", used {peak_mb:.0f} MB" if peak_mb else ""
            return (
                msgspec.structs.replace(spec, memory_mb=grown),
                f"retrying with {grown} MB of memory (asked for {asked.memory_mb} MB{used})",
            )
    elif outcome is Outcome.WALLTIME:
        grown = min(policy.max_walltime_s, math.ceil(spec.walltime_s * policy.walltime_factor))
        if grown > spec.walltime_s:
            return (
                msgspec.structs.replace(spec, walltime_s=grown),
                f"retrying with a walltime of {grown} s (asked for {asked.walltime_s} s)",
            )
    return None
