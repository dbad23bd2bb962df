"""Fair share between users: whose idle job a pilot gets next. A pure function over plain data.

A job's priority orders only its owner's own jobs. Between users the queue is shared by
cores in use: the next job goes to the user with the fewest cores in use per share
(claimed and running jobs, plus the jobs already ordered before it in this claim), the
oldest job first between equals. An operator sets shares per user (``[server.shares]`` in
the server's config.toml); a user without one has ``default`` (1). With equal shares and
equal backlogs, two users each get half of the cores; with shares 3 and 1, three quarters
and one quarter; a user alone gets everything (shares limit nobody while others are idle).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from glidein_server.policy.matchmaking import Candidate

DEFAULT_SHARE = 1.0


@dataclass(frozen=True)
class Shares:
    per_user: Mapping[str, float] = field(default_factory=dict)
    default: float = DEFAULT_SHARE

    def of(self, user: str) -> float:
        return self.per_user.get(user, self.default)


def fair_order(
    queues: Mapping[str, Sequence[Candidate]], in_use: Mapping[str, int], shares: Shares
) -> Iterator[Candidate]:
    """The users' candidates as one sequence, fair-shared by cores.

    ``queues`` holds each user's candidates in that user's own order (priority, then
    multicore first, then age); ``in_use`` the cores each user's claimed and running jobs
    hold now. The sequence is lazy: matchmaking stops reading once the pilot is full.
    """
    heap: list[tuple[float, int, str, int, float]] = []
    for user, queue in queues.items():
        if queue:
            used = float(in_use.get(user, 0))
            heap.append((used / shares.of(user), queue[0].job_id, user, 0, used))
    heapq.heapify(heap)
    while heap:
        _, _, user, i, used = heapq.heappop(heap)
        queue = queues[user]
        job = queue[i]
        yield job
        if i + 1 < len(queue):
            used += job.cpus
            heapq.heappush(heap, (used / shares.of(user), queue[i + 1].job_id, user, i + 1, used))
