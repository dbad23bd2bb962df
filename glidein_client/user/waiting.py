"""What ``glidein wait`` asks the server each round, so that a round costs the server what changed,
not what is queued.

Every round starts with one cheap question: the caller's counts of jobs per state
(``GET /jobs?limit=0``), which the server reads from counts it keeps, never from the jobs.

- :class:`MineWatch` (no ids, no label): every job of yours still active (idle, claimed, running,
  held), those you submit while waiting too, and those of your last submit, as ``squeue -u $USER``
  or ``condor_wait`` on all of one's jobs. A round is the counts alone; the newest idle jobs are read
  only when more are idle than before (for why they wait), the held ones only when that count moves,
  and the failed or cancelled ones at the start and the end.
- :class:`IdsWatch` (ids, with or without a label): the jobs asked for, read again only in a round
  whose counts moved (or once a minute), and then only those not finished yet unless a count of
  finished jobs went down (a retry).
- :class:`LabelWatch` (a label, no ids): the counts the server keeps per label.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from glidein_client.user import lastsubmit, render
from glidein_client.user.session import ACTIVE_STATES, counts_of_ids, jobs_by_ids, list_all, pages, require_found
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobState, JobView

#: A wait on ids reads them again at least this often, whatever the counts say.
REFRESH_S = 60.0
#: The most idle or held jobs read in one round to say why jobs wait.
NOTE_SAMPLE = 1000
FINAL = tuple(s.value for s in JobState if s.final)
BAD = (JobState.FAILED, JobState.CANCELLED)


@dataclass
class Snapshot:
    counts: dict[str, int]
    bad: list[int] = field(default_factory=list)  # failed or cancelled, when the jobs were listed
    notes: dict[str, list[int]] = field(default_factory=dict)  # why unfinished jobs wait -> their ids


class Watch(Protocol):
    async def start(self) -> bool:
        """Whether there is anything to wait for."""

    async def poll(self) -> Snapshot:
        """The jobs' counts now, and any notes on why some wait."""

    async def finish(self, snap: Snapshot) -> Snapshot:
        """The last snapshot, with the failed or cancelled jobs' ids."""


def note_jobs(jobs: Iterable[JobView], notes: dict[str, list[int]]) -> None:
    """Why each unfinished job waits (held: by whom and why; idle: what no site offers)."""
    for job in jobs:
        if job.state is JobState.HELD:
            notes.setdefault(render.job_note(job), []).append(job.id)
        elif not job.state.final and job.note:
            notes.setdefault(job.note, []).append(job.id)


def snapshot_of(jobs: Sequence[JobView]) -> Snapshot:
    snap = Snapshot(render.count_states(jobs))
    snap.bad = [j.id for j in jobs if j.state in BAD]
    note_jobs(jobs, snap.notes)
    return snap


async def own_counts(api: ApiClient) -> dict[str, int]:
    """The caller's jobs per state, from the counts the server keeps (no job is read)."""
    return dict((await api.list_jobs(limit=0)).counts)


class LabelWatch:
    def __init__(self, api: ApiClient, labels: Sequence[str]) -> None:
        self.api, self.labels = api, labels

    async def start(self) -> bool:
        return True

    async def poll(self) -> Snapshot:
        first = await self.api.list_jobs(label=self.labels, limit=1)
        if first.counts:
            return Snapshot(dict(first.counts))
        return snapshot_of((await list_all(self.api, state=None, label=self.labels)).jobs)

    async def finish(self, snap: Snapshot) -> Snapshot:
        return snap


class IdsWatch:
    def __init__(self, api: ApiClient, ids: Sequence[int], labels: Sequence[str] | None) -> None:
        self.api, self.ids, self.labels = api, list(ids), labels
        self.views: dict[int, JobView] = {}
        self.counts: dict[str, int] | None = None
        self.read_at = 0.0
        self.snap = Snapshot({})

    async def start(self) -> bool:
        return True

    async def poll(self) -> Snapshot:
        counts = await own_counts(self.api)
        before, self.counts = self.counts, counts
        due = time.monotonic() - self.read_at >= REFRESH_S
        if before == counts and not due:
            return self.snap  # none of the caller's jobs changed state
        retried = before is not None and any(counts.get(s, 0) < before.get(s, 0) for s in FINAL)
        if before is None or retried or due:
            ask = self.ids
        else:
            ask = [i for i in self.ids if i not in self.views or not self.views[i].state.final]
        self.read_at = time.monotonic()
        jobs = (await jobs_by_ids(self.api, ask, label=self.labels)).jobs if ask else []
        if before is None and not self.labels:
            require_found(self.ids, jobs)
        self.views.update((j.id, j) for j in jobs)
        self.snap = snapshot_of(sorted(self.views.values(), key=lambda j: j.id))
        return self.snap

    async def finish(self, snap: Snapshot) -> Snapshot:
        return snap


class MineWatch:
    def __init__(self, api: ApiClient, url: str) -> None:
        self.api = api
        self.last = lastsubmit.last(url)
        self.counts: dict[str, int] = {}
        self.base: dict[str, int] = {}  # the finished counts before the wait (less what left them since)
        self.last_final: dict[str, int] = {}  # the last submit's jobs finished before the wait
        self.first_id = 0
        self.bad_before: set[int] = set()
        self.rounds = 0

    async def start(self) -> bool:
        self.counts = await own_counts(self.api)
        active = [s for s in ACTIVE_STATES if self.counts.get(s.value)]
        if not active and not self.last:
            return False
        self.base = {s: self.counts.get(s, 0) for s in FINAL}
        if self.last:
            done = await counts_of_ids(self.api, self.last)
            self.last_final = {s: n for s, n in done.items() if s in FINAL}
        firsts = [await self.api.list_jobs(state=s.value, limit=1, counts=False) for s in active]
        self.first_id = min([*self.last, *(p.jobs[0].id for p in firsts if p.jobs)], default=0)
        self.bad_before = set(await self._bad_now())
        return True

    async def _bad_now(self) -> list[int]:
        """Failed or cancelled jobs from the first one waited for on (ids only grow)."""
        found: list[int] = []
        for state in BAD:
            async for page in pages(self.api, state=state.value, label=None, after=self.first_id - 1):
                found += [j.id for j in page.jobs if j.id >= self.first_id]
        return found

    async def poll(self) -> Snapshot:
        counts = await own_counts(self.api)
        before, self.counts = self.counts, counts
        for s in FINAL:  # a retried or purged job leaves a final state: the rest still count as new
            self.base[s] -= max(0, before.get(s, 0) - counts.get(s, 0))
        waited = {s.value: counts[s.value] for s in ACTIVE_STATES if counts.get(s.value)}
        for s in FINAL:
            n = max(0, counts.get(s, 0) - self.base[s]) + self.last_final.get(s, 0)
            if n:
                waited[s] = n
        snap = Snapshot(waited)
        await self._notes(before, counts, snap.notes)
        self.rounds += 1
        return snap

    async def _notes(self, before: Mapping[str, int], counts: Mapping[str, int], notes: dict[str, list[int]]) -> None:
        """Why jobs wait, read from the newest idle jobs when more are idle, and the held ones when
        their number moved: what changed, never the whole queue."""
        idle, held = JobState.IDLE.value, JobState.HELD.value
        first = self.rounds == 0
        more_idle = counts.get(idle, 0) - (0 if first else before.get(idle, 0))
        if more_idle > 0:
            page = await self.api.list_jobs(
                state=idle, limit=min(more_idle, NOTE_SAMPLE), newest_first=True, counts=False
            )
            note_jobs(page.jobs, notes)
        if counts.get(held) and (first or counts.get(held) != before.get(held)):
            page = await self.api.list_jobs(state=held, limit=NOTE_SAMPLE, newest_first=True, counts=False)
            note_jobs(page.jobs, notes)

    async def finish(self, snap: Snapshot) -> Snapshot:
        if not any(snap.counts.get(s.value) for s in BAD):
            return snap
        last = set(self.last)
        snap.bad = sorted(i for i in await self._bad_now() if i not in self.bad_before or i in last)
        return snap
