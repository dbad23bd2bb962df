"""The pilot's round trips to the server while they are in flight, and when the next may go.

At most two are in flight: the *sync* (reports, heartbeat and claim together; a long poll while
the server has no work) and, beside a long poll, a *report* carrying news that must not wait
for it. A failed sync backs off (1 s doubling to 10 s, jittered) before the next.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from glidein_client.wire.schema import AttemptRef, Finish, SyncResponse

MAX_BACKOFF_S = 10.0


@dataclass(frozen=True)
class Flight:
    task: asyncio.Task[SyncResponse]
    reports: tuple[list[AttemptRef], list[Finish]]
    claims: bool  # a full sync; otherwise reports only
    long_poll: bool


@dataclass
class Flights:
    sync: Flight | None = None
    report: Flight | None = None
    last_sync: float = 0.0  # monotonic time the last sync was sent
    last_report: float = 0.0
    backoff_s: float = 0.0
    retry_at: float = 0.0  # no sync before this (monotonic); 0 when none failed

    @property
    def busy(self) -> bool:
        return self.sync is not None or self.report is not None

    def may_sync(self, mono: float) -> bool:
        return self.sync is None and mono >= self.retry_at

    def may_report_beside(self, mono: float, delay_s: float) -> bool:
        """A report may go out now, beside a long poll that is waiting for work."""
        return (
            self.sync is not None
            and self.sync.long_poll
            and self.report is None
            and mono - max(self.last_sync, self.last_report) >= delay_s
        )

    def landed(self) -> list[Flight]:
        """The flights whose answer (or failure) has come, taken out of flight."""
        done = []
        if self.sync is not None and self.sync.task.done():
            done.append(self.sync)
            self.sync = None
        if self.report is not None and self.report.task.done():
            done.append(self.report)
            self.report = None
        return done

    def settled(self, flight: Flight, ok: bool, mono: float) -> None:
        """A sync that failed backs off before the next; one that went through clears the backoff."""
        if not flight.claims:
            return
        if ok:
            self.backoff_s = self.retry_at = 0.0
        else:
            self.backoff_s = min(MAX_BACKOFF_S, max(1.0, self.backoff_s * 2))
            self.retry_at = mono + self.backoff_s * random.uniform(0.75, 1.25)

    def wait_s(self, heartbeat_s: float, mono: float) -> float:
        """The longest the loop may sleep: until the next heartbeat or the end of a backoff."""
        return min(heartbeat_s, self.retry_at - mono) if self.retry_at else heartbeat_s
