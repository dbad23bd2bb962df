"""``glidein cancel|retry|hold|release``: change the state of jobs, one result line each.

Jobs are chosen by ids or by ``--label K=V`` (the caller's jobs carrying every label given; of
those, the ones the action applies to). ``hold`` keeps jobs out of the queue until ``release``
(a running job is stopped and stays held, as condor_hold does); ``retry`` runs failed, cancelled
or held jobs again, with new requirements where given. Holds, releases and retries are kept in
the job's history with their reason.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from glidein_client.user import history
from glidein_client.user.args import arg_type, positive
from glidein_client.user.jobfile import bounded
from glidein_client.user.selection import add_selection, labelled_ids
from glidein_client.user.session import CONCURRENCY, EXIT_ERROR, EXIT_OK, about, connect, emit_json, stop_if_refused
from glidein_client.wire.api import ApiClient
from glidein_client.wire.codec import convert
from glidein_client.wire.errors import ConflictError, GlideinError
from glidein_client.wire.schema import JobState, JobView, RetryRequest
from glidein_client.wire.units import parse_duration_s, parse_memory_mb

#: How long a release or retry waits for a job's stopped attempt to end on its pilot.
WINDING_DOWN_S = 15.0
_HELP = {
    "cancel": "cancel jobs",
    "retry": "run failed, cancelled or held jobs again, with new requirements if given",
    "hold": "keep jobs out of the queue until released (a running job is stopped)",
    "release": "put held jobs back in the queue",
}
#: The states each action applies to, when jobs are chosen by label.
_APPLIES_TO = {
    "cancel": (JobState.IDLE, JobState.CLAIMED, JobState.RUNNING, JobState.HELD),
    "retry": (JobState.FAILED, JobState.CANCELLED, JobState.HELD),
    "hold": (JobState.IDLE, JobState.CLAIMED, JobState.RUNNING),
    "release": (JobState.HELD,),
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    for name, text in _HELP.items():
        p = sub.add_parser(name, parents=[common], help=text, description=f"{text[0].upper()}{text[1:]}.")
        add_selection(p, required=True)
        if name != "cancel":
            p.add_argument("--reason", metavar="TEXT", help="why (kept in the jobs' history)")
        if name == "retry":
            p.add_argument("--cpus", type=arg_type(positive), help="cores from now on")
            p.add_argument("--memory", type=arg_type(parse_memory_mb), help="memory from now on, e.g. 4G")
            p.add_argument("--gpus", type=int, help="GPUs from now on")
            p.add_argument("--walltime", type=arg_type(parse_duration_s), help="time limit from now on, e.g. 2h")
            p.add_argument(
                "--site", dest="sites", action="append", metavar="NAME",
                help="run only at this site from now on (repeatable; --site any lifts the restriction)",
            )  # fmt: skip
        p.set_defaults(handler=cmd_change)


def retry_request(args: argparse.Namespace) -> RetryRequest:
    """The retry's new requirements from its flags, checked as a submit's are (pure)."""
    sites = None if args.sites is None else [s for s in args.sites if s != "any"]
    fields = {
        "reason": args.reason,
        "cpus": args.cpus,
        "memory_mb": args.memory,
        "gpus": args.gpus,
        "walltime_s": None if args.walltime is None else int(args.walltime),
        "sites": sites,
    }
    return convert({k: v for k, v in fields.items() if v is not None}, RetryRequest, what="retry's requirements")


def _action(args: argparse.Namespace, api: ApiClient) -> Callable[[int], Awaitable[JobView]]:
    if args.command == "cancel":
        return api.cancel
    if args.command == "hold":
        return lambda job_id: api.hold(job_id, args.reason)
    if args.command == "release":
        return lambda job_id: api.release(job_id, args.reason)
    req = retry_request(args)
    return lambda job_id: api.retry(job_id, req)


def _result(command: str, view: JobView) -> dict[str, Any]:
    if command == "cancel" and view.state in (JobState.DONE, JobState.FAILED):
        return {
            "id": view.id,
            "error": f"job {view.id} had already finished ({view.state.value}); nothing was cancelled",
            "hint": None,
        }
    result: dict[str, Any] = {"id": view.id, "state": view.state.value}
    last = view.history[-1] if view.history else None
    if command == "retry" and last is not None and last.action == "retried" and last.changes:
        result["changes"] = last.changes
    return result


async def _patiently(action: Callable[[int], Awaitable[JobView]], job_id: int) -> JobView:
    """The action, asked again for a while when the job's stopped attempt is still ending on its pilot
    (a release or retry right after a hold: the pilot hears at once and stops it within seconds)."""
    deadline = time.monotonic() + WINDING_DOWN_S
    while True:
        try:
            return await action(job_id)
        except ConflictError as exc:
            if exc.fields.get("field") != "attempts" or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.5)


async def cmd_change(args: argparse.Namespace) -> int:
    results: dict[int, dict[str, Any]] = {}
    async with connect(args) as api:
        action = _action(args, api)
        ids = args.ids
        if args.label:
            ids = await labelled_ids(api, args.ids, args.label, _APPLIES_TO[args.command], args.command)

        async def one(job_id: int) -> None:
            try:
                view = await _patiently(action, job_id)
            except GlideinError as exc:
                stop_if_refused(exc)
                results[job_id] = {"id": job_id, "error": exc.message, "hint": exc.hint}
            else:
                results[job_id] = _result(args.command, view)

        await bounded(CONCURRENCY, one, ids)
    ordered = [results[i] for i in ids]
    if args.json:
        emit_json({"jobs": ordered})
    for r in ordered:
        if "error" in r:
            hint = f" {r['hint']}" if r.get("hint") else ""
            what = f"job {r['id']}"
            print(f"error: {about(what, r['error'])}{hint}", file=sys.stderr)
        elif not args.json:
            changed = ", ".join(history.change_text(c) for c in r.get("changes", []))
            print(f"job {r['id']}: {r['state']}" + (f" ({changed})" if changed else ""))
    return EXIT_ERROR if any("error" in r for r in ordered) else EXIT_OK
