"""``glidein wait``: wait until jobs are finished, showing progress and why jobs wait."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field

from glidein_client.user import render
from glidein_client.user.args import add_ids, arg_type
from glidein_client.user.selection import add_label
from glidein_client.user.session import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_TIMEOUT,
    RideOut,
    connect,
    default_ids,
    emit_json,
    jobs_by_ids,
    list_all,
    load_config,
    require_found,
)
from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import NotFoundError
from glidein_client.wire.schema import JobState
from glidein_client.wire.units import format_duration, parse_duration_s

POLL_S = 1.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("wait", parents=[common], help="wait until jobs are finished")
    add_ids(p, required=False)
    p.add_argument("--timeout", type=arg_type(parse_duration_s), help="give up after this long, e.g. 10m (exit 3)")
    add_label(p)
    p.set_defaults(handler=cmd_wait)


@dataclass
class Snapshot:
    counts: dict[str, int]
    bad: list[int] = field(default_factory=list)  # failed or cancelled, when the jobs were listed
    notes: dict[str, list[int]] = field(default_factory=dict)  # why unfinished jobs wait -> their ids


async def _poll(api: ApiClient, args: argparse.Namespace) -> Snapshot:
    if args.ids:
        jobs = (await jobs_by_ids(api, args.ids, label=args.label)).jobs
        if not args.label:
            require_found(args.ids, jobs)
    else:
        first = await api.list_jobs(label=args.label, limit=1)
        if first.counts:
            return Snapshot(dict(first.counts))
        jobs = (await list_all(api, state=None, label=args.label)).jobs
    snap = Snapshot(render.count_states(jobs))
    for job in jobs:
        if job.state in (JobState.FAILED, JobState.CANCELLED):
            snap.bad.append(job.id)
        elif job.state is JobState.HELD:  # waits until released: say by whom and why
            snap.notes.setdefault(render.job_note(job), []).append(job.id)
        elif not job.state.final and job.note:
            snap.notes.setdefault(job.note, []).append(job.id)
    return snap


def _nothing_to_wait_for(as_json: bool) -> int:
    if as_json:
        emit_json({"total": 0, "counts": {}, "timed_out": False, "failed_ids": []})
    else:
        print("No active or just-submitted jobs to wait for.")
    return EXIT_OK


async def cmd_wait(args: argparse.Namespace) -> int:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    progress = render.Progress(sys.stderr)
    timed_out = False
    told: set[str] = set()
    patiently = RideOut()
    async with connect(args) as api:
        if not args.ids and not args.label:  # a label names its jobs, finished ones too
            args.ids = await patiently(lambda: default_ids(api, load_config(args).url))
            if not args.ids:
                return _nothing_to_wait_for(args.json)
        try:
            while True:
                snap = await patiently(lambda: _poll(api, args))
                counts, total = snap.counts, sum(snap.counts.values())
                final = sum(counts.get(s.value, 0) for s in JobState if s.final)
                for note, ids in snap.notes.items():
                    if note not in told:
                        told.add(note)
                        progress.message(f"note: {render.plural(len(ids), 'job')} ({render.compress_ids(ids)}): {note}")
                if total:
                    progress.show(render.progress_line(counts, total))
                if final == total:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    timed_out = True
                    break
                left = POLL_S if deadline is None else deadline - time.monotonic()
                await asyncio.sleep(max(0.0, min(POLL_S, left)))
        finally:
            progress.close()
    return _report(args, snap, timed_out)


def _report(args: argparse.Namespace, snap: Snapshot, timed_out: bool) -> int:
    counts, total = snap.counts, sum(snap.counts.values())
    final = sum(counts.get(s.value, 0) for s in JobState if s.final)
    failed = counts.get("failed", 0) + counts.get("cancelled", 0)
    if not total and args.label:  # a label that selects nothing is a mistake, not a finished wait
        raise NotFoundError(
            f"No job of yours carries {' and '.join(args.label)}.",
            hint="See your jobs and their labels with: glidein status --json",
        )
    if args.json:
        emit_json({"total": total, "counts": counts, "timed_out": timed_out, "failed_ids": snap.bad})
    elif not total:
        print("No jobs to wait for.")
    else:
        print(f"{render.plural(total, 'job')}: {render.format_counts(counts)}")
        if snap.bad:
            print(f"Failed or cancelled: {render.compress_ids(snap.bad)} (see: glidein logs {snap.bad[0]})")
        if timed_out:
            print(f"Gave up waiting after {format_duration(args.timeout)}; {total - final} not finished.")
    if timed_out:
        return EXIT_TIMEOUT
    return EXIT_ERROR if failed else EXIT_OK
