"""What a pilot is told (:class:`PilotSettings`) and where its main loop stands (:class:`Phase`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from glidein_client.pilot.isolation import Isolation, NoIsolation


class Phase(enum.Enum):
    """Where the pilot stands; each turn of the main loop may move it on, never back."""

    WORKING = "working"  # claiming jobs and starting them
    DRAINING = "draining"  # stopping: no new work, running jobs are stopped, reports still go out
    GONE = "gone"  # the server no longer knows this pilot: reports are dropped
    DONE = "done"  # nothing left to do: leave


@dataclass(frozen=True)
class PilotSettings:
    scratch: Path
    idle_timeout_s: float = 120.0
    prefetch_s: float = 2.0  # local backlog: about this many seconds of short work per slot
    max_backlog: int = 256
    end_margin_s: float = 5.0  # leave this long before the end time
    min_disk_mb: int = 100
    required_commands: tuple[str, ...] = ()
    poll_s: float = 1.0  # memory checks
    grace_s: float = 5.0  # SIGTERM -> SIGKILL for jobs
    signal_grace_s: float = 0.0  # what the batch system leaves between its warning signal and the kill
    black_hole_failures: int = 5  # this many jobs in a row failing fast: stop taking work
    fast_failure_s: float = 10.0
    outage_s: float = 300.0  # keep retrying transfers and registration this long while the server is away
    isolation: Isolation = field(default_factory=NoIsolation)
    drain_file: Path | None = None  # when it appears: no more jobs, running ones finish, then leave
