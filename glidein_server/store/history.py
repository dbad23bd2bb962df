"""A job's history as both stores keep it: one row per hold, release or retry by request, and per
retry whose request the lifecycle grew (after the job ran out of memory or time).

Plain functions over rows, shared by the SQLite and PostgreSQL stores: the row an act becomes,
the reason a held job shows, and rows read back as :class:`JobEvent` per job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from glidein_client.wire.schema import JobChange, JobEvent, JobView
from glidein_server.policy.lifecycle import GROWN, GROWN_BY, JobPlan, asked_of
from glidein_server.store.base import JobAct

_changes = msgspec.json.Decoder(list[JobChange])


def event_row(job_id: int, act: JobAct, action: str, changes: Sequence[JobChange] = ()) -> tuple[Any, ...]:
    """The ``job_event_insert`` parameters: job id, time, who, what, why, and a retry's changes as JSON."""
    text = msgspec.json.encode(list(changes)).decode() if changes else None
    return (job_id, act.at, act.by, action, act.reason, text)


def job_reason(action: str, act: JobAct) -> str:
    """What the job's reason says after an act: ``held by alice: disk full``."""
    return f"{action} by {act.by}" + (f": {act.reason}" if act.reason else "")


def with_history(views: Sequence[JobView], events: Mapping[int, list[JobEvent]]) -> list[JobView]:
    """The views with their jobs' history and what their owners asked before a retry grew it."""
    out = []
    for view in views:
        listed = events.get(view.id)
        out.append(msgspec.structs.replace(view, history=listed, asked=asked_of(listed)) if listed else view)
    return out


def grown_row(job_id: int, plan: JobPlan, now: float) -> tuple[Any, ...]:
    """The ``job_event_insert`` parameters of a retry whose request the lifecycle grew."""
    return event_row(job_id, JobAct(by=GROWN_BY, at=now, reason=plan.reason), GROWN, plan.changes)


def events_by_job(rows: Iterable[Sequence[Any]]) -> dict[int, list[JobEvent]]:
    """``job_events_of`` rows (job id, at, actor, action, reason, changes), oldest first per job."""
    out: dict[int, list[JobEvent]] = {}
    for job_id, at, actor, action, reason, changes in rows:
        listed = _changes.decode(changes) if changes else []
        out.setdefault(job_id, []).append(JobEvent(at=at, action=action, by=actor, reason=reason, changes=listed))
    return out
