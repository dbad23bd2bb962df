"""``glidein show ID``: one job, every attempt's usage and provenance — what to cite for how a file was made."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from glidein_client.user import history, provenance, render
from glidein_client.user.args import arg_type, positive
from glidein_client.user.session import EXIT_OK, connect, emit_json
from glidein_client.wire.schema import AttemptView, JobView
from glidein_client.wire.units import format_duration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "show",
        parents=[common],
        help="one job with where and how each attempt ran (host, versions, CPU time, file hashes)",
    )
    p.add_argument("id", type=arg_type(positive), metavar="ID")
    p.set_defaults(handler=cmd_show)


async def cmd_show(args: argparse.Namespace) -> int:
    async with connect(args) as api:
        job = await api.get_job(args.id)
        attempts = sorted(await api.attempts(args.id), key=lambda a: (a.claimed_at, a.id))
    if args.json:
        emit_json({"job": job, "attempts": attempts})
    else:
        print(job_text(job, attempts), end="")
    return EXIT_OK


def job_text(job: JobView, attempts: Sequence[AttemptView]) -> str:
    spec = job.spec
    what = " ".join(spec.argv) if spec.argv else "(script)"
    lines = [
        f"job {job.id} of {job.owner}: {job.state.value}" + (f" at site {job.site}" if job.site else ""),
        f"command:   {what}",
        f"asked for: {render.plural(spec.cpus, 'core')}, {render.format_memory_mb(spec.memory_mb)} memory"
        f"{render.asked(job, 'memory_mb')}, {spec.gpus} GPUs, walltime {format_duration(spec.walltime_s)}"
        f"{render.asked(job, 'walltime_s')}",
        f"submitted: {render.format_time(job.submitted_at)}, finished {render.format_time(job.finished_at)}",
    ]
    if spec.labels:
        lines.append("labels:    " + ", ".join(f"{k}={v}" for k, v in sorted(spec.labels.items())))
    note = render.job_note(job)
    if note:
        lines.append(f"note:      {note}")
    lines += history.history_lines(job)
    if not attempts:
        lines.append("It has not run yet.")
    for n, a in enumerate(attempts, start=1):
        kept = " (its result was kept)" if job.usage is not None and job.usage.attempt_id == a.id else ""
        lines.append("")
        lines.append(f"=== attempt {n} of {len(attempts)} (id {a.id}) at site {a.site}, pilot {a.pilot_id}{kept}")
        lines.append(f"outcome:   {a.outcome or 'still running'}" + (f": {a.reason}" if a.reason else ""))
        usage = provenance.usage_line(a.cpus, a.wall_s, a.cpu_s, a.cpu_efficiency, a.max_rss_mb)
        if usage:
            lines.append(usage)
        lines += provenance.provenance_lines(a.provenance, a.outputs)
    return "\n".join(lines) + "\n"
