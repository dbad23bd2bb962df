"""``glidein wait``: wait until jobs are finished, showing progress and why jobs wait.

Without ids or a label it waits for every job of yours still active (those you submit meanwhile too)
and those of your last submit; what each round asks the server is in
:mod:`glidein_client.user.waiting`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from glidein_client.user import render
from glidein_client.user.args import add_ids, arg_type
from glidein_client.user.selection import add_label
from glidein_client.user.session import EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, RideOut, connect, emit_json, load_config
from glidein_client.user.waiting import IdsWatch, LabelWatch, MineWatch, Snapshot, Watch
from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import NotFoundError
from glidein_client.wire.schema import JobState
from glidein_client.wire.units import format_duration, parse_duration_s

POLL_S = 1.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "wait",
        parents=[common],
        help="wait until jobs are finished",
        description="Wait until the jobs are finished: IDS, or those with --label, or (neither) every job "
        "of yours still active, those you submit meanwhile too, and those of your last submit. "
        "Exit 0 when all are done, 1 if any failed or was cancelled, 3 on --timeout.",
    )
    add_ids(p, required=False)
    p.add_argument("--timeout", type=arg_type(parse_duration_s), help="give up after this long, e.g. 10m (exit 3)")
    add_label(p)
    p.set_defaults(handler=cmd_wait)


def _watch(api: ApiClient, args: argparse.Namespace) -> Watch:
    if args.ids:
        return IdsWatch(api, args.ids, args.label)
    if args.label:  # a label names its jobs, finished ones too
        return LabelWatch(api, args.label)
    return MineWatch(api, load_config(args).url)


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
        watch = _watch(api, args)
        if not await patiently(watch.start):
            return _nothing_to_wait_for(args.json)
        try:
            while True:
                snap = await patiently(watch.poll)
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
            snap = await patiently(lambda: watch.finish(snap))
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
