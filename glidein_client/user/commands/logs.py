"""``glidein logs``: the attempts of a job with their output tails."""

from __future__ import annotations

import argparse
import time

from glidein_client.user import history, provenance, render
from glidein_client.user.args import arg_type, positive
from glidein_client.user.session import EXIT_OK, connect, emit_json
from glidein_client.wire.errors import NotFoundError
from glidein_client.wire.schema import AttemptView
from glidein_client.wire.units import format_duration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("logs", parents=[common], help="attempts of a job with their output tails")
    p.add_argument("id", type=arg_type(positive), metavar="ID")
    p.add_argument("--attempt", type=arg_type(positive), metavar="N", help="only the N-th attempt (1 = first)")
    p.set_defaults(handler=cmd_logs)


async def cmd_logs(args: argparse.Namespace) -> int:
    async with connect(args) as api:
        attempts = sorted(await api.attempts(args.id), key=lambda a: (a.claimed_at, a.id))
        job = None if args.json else await api.get_job(args.id)
    numbered = list(enumerate(attempts, start=1))
    if args.attempt is not None:
        if args.attempt > len(attempts):
            raise NotFoundError(
                f"Job {args.id} has {render.plural(len(attempts), 'attempt')}, not {args.attempt}.",
                hint=f"Leave out --attempt to see all of them: glidein logs {args.id}",
            )
        numbered = [numbered[args.attempt - 1]]
    if args.json:
        emit_json([a for _, a in numbered])
        return EXIT_OK
    assert job is not None
    if not attempts:
        note = f": {render.job_note(job)}" if render.job_note(job) else ""
        print(f"Job {job.id} has not run yet ({job.state.value}){note}")
    for line in history.history_lines(job):  # holds, releases and retries by request
        print(line)
    for n, attempt in numbered:
        print(attempt_text(n, len(attempts), attempt))
    return EXIT_OK


def attempt_text(n: int, total: int, a: AttemptView) -> str:
    ran = ""
    if a.started_at is not None:
        ran = f" (ran {format_duration((a.finished_at or time.time()) - a.started_at)})"
    lines = [
        f"=== attempt {n} of {total} (id {a.id}) at site {a.site}, pilot {a.pilot_id}",
        f"outcome:   {a.outcome or 'still running'}",
        f"exit code: {'-' if a.exit_code is None else a.exit_code}",
    ]
    if a.reason:
        lines.append(f"reason:    {a.reason}")
    lines.append(
        f"claimed {render.format_time(a.claimed_at)}, started {render.format_time(a.started_at)}, "
        f"finished {render.format_time(a.finished_at)}{ran}"
    )
    usage = provenance.usage_line(a.cpus, a.wall_s, a.cpu_s, a.cpu_efficiency, a.max_rss_mb)
    lines += [usage] if usage else []
    lines += provenance.provenance_lines(a.provenance, a.outputs)
    for name, tail in (("stdout", a.stdout_tail), ("stderr", a.stderr_tail)):
        lines.append(f"--- {name} (last part) ---" if tail else f"--- {name}: empty ---")
        if tail:
            lines.append(tail.rstrip("\n"))
    return "\n".join(lines) + "\n"
