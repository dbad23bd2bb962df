"""``glidein status``: jobs in a table, with counts per state.

Without ids it shows what ``condor_q`` would: the jobs still active, with those of the last submit
(finished or not), the newest 50 of them and a totals line counting them all by state (the counts
come from the server's kept totals, so a queue of a million jobs costs a few requests); ``--state``
and ``--label`` select from all of history, ``--all`` lists every row.
"""

from __future__ import annotations

import argparse
import sys

from glidein_client.user import datasets, lastsubmit, render
from glidein_client.user.args import add_ids
from glidein_client.user.selection import add_label
from glidein_client.user.session import (
    ACTIVE_STATES,
    EXIT_ERROR,
    EXIT_OK,
    RideOut,
    connect,
    counts_of_ids,
    emit_json,
    jobs_by_ids,
    list_all,
    load_config,
)
from glidein_client.user.tasks import bounded
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobList, JobState, JobView

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
            url = load_config(args).url
            result, scope = await patiently(lambda: recent_status(api, args, url))
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


async def recent_status(api: ApiClient, args: argparse.Namespace, url: str) -> tuple[JobList, str]:
    """Without ids: the jobs of the last submit and those still active, as ``condor_q`` shows them;
    with a line saying so when older jobs are left out. For people, the newest ``STATUS_ROWS`` of them
    and their counts per state (a few requests however long the queue); with --json, every one."""
    everything = (await api.list_jobs(limit=0)).counts  # counts only, from the server's kept totals
    if args.json:
        result = await all_recent(api, lastsubmit.last(url))
    else:
        result = await newest_recent(api, lastsubmit.last(url), everything)
    total, listed = sum(everything.values()), sum(result.counts.values())
    if not listed and total:
        scope = f"No active or just-submitted jobs; --all lists all {render.plural(total, 'job')}."
    elif not listed:
        scope = "No jobs."
    elif total > listed:
        scope = f"(your last submit and active jobs; --all lists all {render.plural(total, 'job')})"
    else:
        scope = ""
    return result, scope


async def all_recent(api: ApiClient, last: list[int]) -> JobList:
    """Every active and last-submitted job (for --json): each active state paged through, then the
    last submit's jobs not among them."""
    listed = await bounded(3, lambda s: list_all(api, state=s.value, label=None), ACTIVE_STATES)
    rows = {j.id: j for page in listed for j in page.jobs}
    rest = [i for i in last if i not in rows]
    rows.update({j.id: j for j in (await jobs_by_ids(api, rest)).jobs} if rest else {})
    jobs = sorted(rows.values(), key=lambda j: j.id)
    return JobList(jobs=jobs, counts=render.count_states(jobs))


async def newest_recent(api: ApiClient, last: list[int], everything: dict[str, int]) -> JobList:
    """The newest ``STATUS_ROWS`` of the active and last-submitted jobs, and the counts of all of them:
    the active states' totals as the server keeps them, and the finished jobs of the last submit."""
    active = [s.value for s in ACTIVE_STATES if everything.get(s.value)]

    async def newest(state: str) -> list[JobView]:
        return (await api.list_jobs(state=state, limit=STATUS_ROWS, newest_first=True, counts=False)).jobs

    listed = await bounded(4, newest, active)
    recent = await jobs_by_ids(api, last[-STATUS_ROWS:]) if last else JobList(jobs=[], counts={})
    rows = {j.id: j for j in (*(j for jobs in listed for j in jobs), *recent.jobs)}
    counts = {s: everything[s] for s in active}
    for state, n in (await counts_of_ids(api, last)).items():
        if state not in active:  # the active ones are counted already
            counts[state] = counts.get(state, 0) + n
    return JobList(jobs=sorted(rows.values(), key=lambda j: j.id)[-STATUS_ROWS:], counts=counts)


async def status_list(api: ApiClient, args: argparse.Namespace) -> JobList:
    """Every matching job for --all and --json; else the newest STATUS_ROWS of them."""
    if args.all or args.json:
        result = await list_all(api, state=args.state, label=args.label)
    else:
        result = await api.list_jobs(state=args.state, label=args.label, limit=STATUS_ROWS, newest_first=True)
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
