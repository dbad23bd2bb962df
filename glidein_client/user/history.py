"""A job's history for people: who held, released or retried it, when, why, and what a retry changed."""

from __future__ import annotations

from glidein_client.user import render
from glidein_client.wire.schema import JobChange, JobEvent, JobView
from glidein_client.wire.units import format_duration

#: How each requirement a retry may change is named and written.
_NAMES = {"cpus": "cores", "memory_mb": "memory", "gpus": "GPUs", "walltime_s": "walltime", "sites": "sites"}


def _value(field: str, value: int | list[str] | None) -> str:
    if value is None:
        return "any" if field == "sites" else "-"
    if isinstance(value, list):
        return ",".join(value) or "any"
    if field == "memory_mb":
        return render.format_memory_mb(value)
    if field == "walltime_s":
        return format_duration(value)
    return str(value)


def change_text(change: JobChange) -> str:
    """``memory 1000M -> 4.0G``."""
    name = _NAMES.get(change.field, change.field)
    return f"{name} {_value(change.field, change.old)} -> {_value(change.field, change.new)}"


def event_text(event: JobEvent) -> str:
    """``2026-12-03 02:40:11 retried by alice: more memory (memory 1000M -> 4.0G)``."""
    why = f": {event.reason}" if event.reason else ""
    changed = f" ({', '.join(change_text(c) for c in event.changes)})" if event.changes else ""
    return f"{render.format_time(event.at)} {event.action} by {event.by}{why}{changed}"


def history_lines(job: JobView) -> list[str]:
    """``history:`` and one indented line per event, or nothing for a job without history."""
    if not job.history:
        return []
    return ["history:", *(f"  {event_text(e)}" for e in job.history)]
