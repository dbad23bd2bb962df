"""Which jobs a command acts on: ids and ranges, and ``--label K=V`` (repeatable; a job must carry every one).

A label selects the caller's own jobs that carry it (the server scopes a user's list to their own
jobs), resolved through the paged ``GET /jobs?label=...`` list, which takes every label at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Sequence

from glidein_client.user import render
from glidein_client.user.args import add_ids, arg_type, label_filter
from glidein_client.user.session import jobs_by_ids, list_all
from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import NotFoundError
from glidein_client.wire.schema import JobList, JobState


def add_selection(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """``IDS...`` and ``--label K=V``; with ``required``, one of them must be given (a usage error else)."""
    add_ids(parser, required=False)
    add_label(parser)
    parser.set_defaults(needs_selection=required)


def add_label(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--label",
        action="append",
        type=arg_type(label_filter),
        metavar="K=V",
        help="your jobs carrying this label, e.g. dataset=run42 (repeatable: jobs carrying all of them)",
    )


def missing_selection(args: argparse.Namespace) -> bool:
    """Whether a command that needs jobs got neither ids nor a label."""
    return bool(getattr(args, "needs_selection", False)) and not args.ids and not args.label


async def labelled(api: ApiClient, ids: Sequence[int], labels: Sequence[str]) -> JobList:
    """The caller's jobs carrying every label (among ``ids`` when given); NotFoundError when none does."""
    found = await jobs_by_ids(api, ids, label=labels) if ids else await list_all(api, state=None, label=labels)
    if not found.jobs:
        among = f" among {render.compress_ids(ids)}" if ids else ""
        raise NotFoundError(
            f"No job of yours{among} carries {' and '.join(labels)}.",
            hint="See your jobs and their labels with: glidein status --json",
        )
    return found


async def labelled_ids(
    api: ApiClient, ids: Sequence[int], labels: Sequence[str], states: Collection[JobState], action: str
) -> list[int]:
    """The ids of the caller's jobs carrying every label that are in one of ``states`` (those ``action``
    applies to); NotFoundError, naming what was found, when none is."""
    jobs = (await labelled(api, ids, labels)).jobs
    chosen = [j.id for j in jobs if j.state in states]
    if not chosen:
        counts = render.format_counts(render.count_states(jobs))
        wanted = " or ".join(s.value for s in states)
        raise NotFoundError(
            f"None of the {render.plural(len(jobs), 'job')} carrying {' and '.join(labels)} is {wanted} "
            f"({counts}); nothing to {action}."
        )
    return chosen
