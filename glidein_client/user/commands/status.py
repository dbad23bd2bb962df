"""``glidein status``: jobs in a table, with counts per state.

Without ids it shows what ``condor_q`` would: the jobs still active, with those of the last submit
(finished or not); ``--state`` and ``--label`` select from all of history, ``--all`` lists it all.
"""

from __future__ import annotations

import argparse
import sys

from glidein_client.user import datasets, render
from glidein_client.user.args import add_ids
from glidein_client.user.selection import add_label
from glidein_client.user.session import (
    EXIT_ERROR,
    EXIT_OK,
    RideOut,
    connect,
    default_ids,
    emit_json,
    jobs_by_ids,
    list_all,
    load_config,
)
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobList, JobState

STATUS_ROWS = 50


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("status", parents=[common], help="show jobs in a table")
    add_ids(p, required=False)
    p.add_argument("--state", choices=[s.value for s in JobState])
    add_label(p)
    p.add_argument(
        "--all",
        action="store_true",
        help="every job in your history, every row (default: the last submit and active jobs, "
        f"at most {STATUS_ROWS} rows)",
    )
    p.add_argument("--by", metavar="LABEL", help="progress per value of a label, e.g. --by dataset")
    p.set_defaults(handler=cmd_status)


async def cmd_status(args: argparse.Namespace) -> int:
    if args.by:
        return await status_by(args)
    missing: list[int] = []
    scope = ""
    patiently = RideOut()
    async with connect(args) as api:
        if args.ids:
            result = await patiently(lambda: jobs_by_ids(api, args.ids, state=args.state, label=args.label))
            if not args.state and not args.label:
                missing = sorted(set(args.ids) - {j.id for j in result.jobs})
        elif args.state or args.label or args.all:
            result = await patiently(lambda: status_list(api, args))
        else:
            result, scope = await patiently(lambda: recent_status(api, args))
    if args.json:
        emit_json(result)
    else:
        _print_status(result, args.state, scope)
    if missing:
        print(f"error: no job {render.compress_ids(missing)} (or not yours).", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def _print_status(result: JobList, state: str | None, scope: str) -> None:
    total = sum(result.counts.values())
    matching = result.counts.get(state, 0) if state else total
    if result.jobs:
        print(render.jobs_table(result.jobs))
    if matching > len(result.jobs):
        print(f"... {matching - len(result.jobs)} earlier jobs not shown; --all lists every job.")
    if state:  # that state only: the totals of other states would answer another question
        print(f"No {state} jobs." if not matching else f"{render.plural(matching, 'job')}: {matching} {state}")
    elif total:
        print(f"{render.plural(total, 'job')}: {render.format_counts(result.counts)}")
    elif not scope:
        print("No jobs.")
    if scope:
        print(scope)


async def recent_status(api: ApiClient, args: argparse.Namespace) -> tuple[JobList, str]:
    """Without ids: the jobs of the last submit and those still active, as ``condor_q`` shows them;
    with a line saying so when older jobs are left out."""
    ids = await default_ids(api, load_config(args).url)
    everything = sum((await api.list_jobs(limit=1)).counts.values())
    result = await jobs_by_ids(api, ids) if ids else JobList(jobs=[], counts={})
    if not args.json and len(result.jobs) > STATUS_ROWS:
        result = JobList(jobs=result.jobs[-STATUS_ROWS:], counts=result.counts)
    listed = sum(result.counts.values())
    if not ids and everything:
        scope = f"No active or just-submitted jobs; --all lists all {render.plural(everything, 'job')}."
    elif not ids:
        scope = "No jobs."
    elif everything > listed:
        scope = f"(your last submit and active jobs; --all lists all {render.plural(everything, 'job')})"
    else:
        scope = ""
    return result, scope


async def status_list(api: ApiClient, args: argparse.Namespace) -> JobList:
    """Every matching job for --all and --json; else the newest STATUS_ROWS of them."""
    if args.all or args.json:
        result = await list_all(api, state=args.state, label=args.label)
    else:
        result = await api.list_jobs(state=args.state, label=args.label, limit=STATUS_ROWS)
        matching = result.counts.get(args.state, 0) if args.state else sum(result.counts.values())
        if matching > STATUS_ROWS:
            newest = await api.list_jobs(
                state=args.state, label=args.label, limit=STATUS_ROWS, offset=matching - STATUS_ROWS
            )
            result = JobList(jobs=newest.jobs, counts=result.counts)
    result.jobs.sort(key=lambda j: j.id)
    if not result.counts:
        result.counts = render.count_states(result.jobs)
    return result


async def status_by(args: argparse.Namespace) -> int:
    """``--by LABEL``: every matching job, grouped by the label's value."""
    async with connect(args) as api:
        if args.ids:
            result = await RideOut()(lambda: jobs_by_ids(api, args.ids, state=args.state, label=args.label))
        else:
            result = await RideOut()(lambda: list_all(api, state=args.state, label=args.label))
    groups = datasets.by_label(result.jobs, args.by)
    if args.json:
        emit_json(datasets.as_json(groups))
    else:
        print(datasets.table(groups, args.by) if groups else "No jobs.")
    return EXIT_OK
