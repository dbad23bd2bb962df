"""``glidein-server purge --before 30d``: remove jobs that finished long ago, with their attempts and files."""

from __future__ import annotations

import argparse
import time

from glidein_client.wire.units import parse_duration_s
from glidein_server.commands.common import emit, open_state_store, state_dir
from glidein_server.retention import purge
from glidein_server.store.files import FileStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "purge",
        parents=[common],
        help="delete jobs finished more than a given age ago, with their attempts and output files",
    )
    p.add_argument("--before", required=True, help="age of the finished jobs to delete, e.g. 30d or 12h")
    p.set_defaults(handler=cmd_purge)


async def cmd_purge(args: argparse.Namespace) -> int:
    age_s = parse_duration_s(args.before, field="--before")
    state = state_dir(args)
    settings = state.load()
    files = FileStore(state.files(settings), max_bytes=settings.max_file_mb << 20)
    async with open_state_store(state, settings) as store:
        totals = await purge(store, files, time.time() - age_s)
    emit(
        args.json,
        {"jobs": totals.jobs, "attempts": totals.attempts, "files": totals.files},
        f"Purged {totals.jobs} jobs finished more than {args.before} ago, "
        f"{totals.attempts} attempts and {totals.files} output files.",
    )
    return 0
