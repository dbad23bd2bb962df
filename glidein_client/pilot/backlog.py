"""The pilot's local backlog: claimed jobs waiting for a free slot, with their summed needs.

The sums are kept as jobs come and go, so asking "what is free once the backlog has started"
costs the same with 3 waiting jobs as with 256.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from glidein_client.wire.schema import ClaimedJob


class Backlog:
    def __init__(self) -> None:
        self._jobs: deque[ClaimedJob] = deque()
        self.cpus = 0
        self.memory_mb = 0
        self.gpus = 0
        self.disk_mb = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[ClaimedJob]:
        return iter(self._jobs)

    def _count(self, claim: ClaimedJob, sign: int) -> None:
        spec = claim.spec
        self.cpus += sign * spec.cpus
        self.memory_mb += sign * spec.memory_mb
        self.gpus += sign * spec.gpus
        self.disk_mb += sign * spec.disk_mb

    def extend(self, claims: Iterable[ClaimedJob]) -> None:
        for claim in claims:
            self._jobs.append(claim)
            self._count(claim, 1)

    def popleft(self) -> ClaimedJob:
        claim = self._jobs.popleft()
        self._count(claim, -1)
        return claim

    def putback(self, claims: list[ClaimedJob]) -> None:
        """Return jobs taken with ``popleft`` to the front, in their order."""
        for claim in reversed(claims):
            self._jobs.appendleft(claim)
            self._count(claim, 1)

    def take(self, attempt_id: int) -> ClaimedJob | None:
        """Remove and return the job of that attempt, if it waits here."""
        for claim in self._jobs:
            if claim.attempt_id == attempt_id:
                self._jobs.remove(claim)
                self._count(claim, -1)
                return claim
        return None
