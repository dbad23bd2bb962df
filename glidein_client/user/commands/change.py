"""``glidein cancel`` and ``glidein retry``: change the state of jobs, one result line each."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from glidein_client.user.args import add_ids
from glidein_client.user.jobfile import bounded
from glidein_client.user.session import CONCURRENCY, EXIT_ERROR, EXIT_OK, about, connect, emit_json, stop_if_refused
from glidein_client.wire.errors import GlideinError
from glidein_client.wire.schema import JobState


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    for name, text in (("cancel", "cancel jobs"), ("retry", "run failed or cancelled jobs again")):
        p = sub.add_parser(name, parents=[common], help=text)
        add_ids(p, required=True)
        p.set_defaults(handler=cmd_change)


async def cmd_change(args: argparse.Namespace) -> int:
    results: dict[int, dict[str, Any]] = {}
    async with connect(args) as api:
        action = api.cancel if args.command == "cancel" else api.retry

        async def one(job_id: int) -> None:
            try:
                view = await action(job_id)
            except GlideinError as exc:
                stop_if_refused(exc)
                results[job_id] = {"id": job_id, "error": exc.message, "hint": exc.hint}
            else:
                if args.command == "cancel" and view.state in (JobState.DONE, JobState.FAILED):
                    results[job_id] = {
                        "id": job_id,
                        "error": f"job {job_id} had already finished ({view.state.value}); nothing was cancelled",
                        "hint": None,
                    }
                    return
                results[job_id] = {"id": job_id, "state": view.state.value}

        await bounded(CONCURRENCY, one, args.ids)
    ordered = [results[i] for i in args.ids]
    if args.json:
        emit_json({"jobs": ordered})
    for r in ordered:
        if "error" in r:
            hint = f" {r['hint']}" if r.get("hint") else ""
            what = f"job {r['id']}"
            print(f"error: {about(what, r['error'])}{hint}", file=sys.stderr)
        elif not args.json:
            print(f"job {r['id']}: {r['state']}")
    return EXIT_ERROR if any("error" in r for r in ordered) else EXIT_OK
