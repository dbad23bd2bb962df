"""What a job asks for on its next attempt, after it was killed for its memory or walltime.

Pure functions over plain data. A job killed for exceeding its memory is retried with more
memory, one killed for its walltime with more walltime, each by a factor up to a cap, as an
HTCondor user would do by hand with ``request_memory = MAX(...)`` in a retry policy.
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


def next_spec(spec: JobSpec, outcome: Outcome, policy: RetryPolicy) -> tuple[JobSpec, str] | None:
    """The grown request and a note saying so, or None when the retry asks for the same."""
    if outcome is Outcome.MEMORY:
        grown = min(policy.max_memory_mb, math.ceil(spec.memory_mb * policy.memory_factor))
        if grown > spec.memory_mb:
            return msgspec.structs.replace(spec, memory_mb=grown), f"retrying with {grown} MB of memory"
    elif outcome is Outcome.WALLTIME:
        grown = min(policy.max_walltime_s, math.ceil(spec.walltime_s * policy.walltime_factor))
        if grown > spec.walltime_s:
            return msgspec.structs.replace(spec, walltime_s=grown), f"retrying with a walltime of {grown} s"
    return None
