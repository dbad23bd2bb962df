"""``glidein submit``: one job (command after ``--``), a script, or a job file."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from glidein_client.user import lastsubmit, render
from glidein_client.user.args import arg_type, key_value, positive
from glidein_client.user.jobfile import JobDraft, build_drafts, check_all, load_jobfile, read_local_files, upload_files
from glidein_client.user.session import EXIT_OK, connect, emit_json, load_config
from glidein_client.wire.errors import GlideinError, ValidationError
from glidein_client.wire.schema import MAX_JOBS_PER_REQUEST
from glidein_client.wire.units import parse_duration_s, parse_memory_mb

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "submit",
        parents=[common],
        help="submit one job (command after --), a script, or a job file",
        description="Submit one job: glidein submit [options] -- COMMAND ARGS...; or a script "
        "(--script FILE); or many jobs from a job file: glidein submit jobs.toml.",
    )
    p.add_argument("jobfile", nargs="?", help="a TOML job file (see examples/jobs.toml)")
    p.add_argument("--script", metavar="FILE", help="a script file to run instead of a command")
    p.add_argument("--cpus", type=arg_type(positive), help="cores (default 1)")
    p.add_argument("--memory", type=arg_type(parse_memory_mb), help="memory, e.g. 512M, 2G (default 1G)")
    p.add_argument("--gpus", type=int, help="GPUs (default 0)")
    p.add_argument("--disk", type=arg_type(parse_memory_mb), help="scratch disk, e.g. 10G (default 1G)")
    p.add_argument("--walltime", type=arg_type(parse_duration_s), help="time limit, e.g. 90s, 10m, 2h (default 1h)")
    p.add_argument(
        "-i", "--input", dest="inputs", action="append", metavar="FILE[:NAME]|URL",
        help="input: a local file (uploaded; FILE:NAME renames it in the job) or an http(s) URL (repeatable)",
    )  # fmt: skip
    p.add_argument("-o", "--output", dest="outputs", action="append", metavar="NAME", help="output (repeatable)")
    p.add_argument(
        "--label", dest="labels", action="append", type=arg_type(key_value), metavar="K=V",
        help="label to find the job by later, e.g. dataset=run42 (repeatable)",
    )  # fmt: skip
    p.add_argument("--env", action="append", type=arg_type(key_value), metavar="K=V", help="environment variable")
    p.add_argument("--site", dest="sites", action="append", metavar="NAME", help="allowed site (repeatable)")
    p.add_argument("--priority", type=int, help="higher runs first (default 0)")
    p.add_argument(
        "--max-retries",
        type=int,
        help="reruns after the job's own failure (default 0, as in HTCondor; a job killed for its memory or "
        "walltime is retried bigger regardless)",
    )
    p.set_defaults(handler=cmd_submit)


_SINGLE_JOB_FLAGS = {
    "script": "--script", "cpus": "--cpus", "memory": "--memory", "gpus": "--gpus", "disk": "--disk",
    "walltime": "--walltime", "inputs": "-i", "outputs": "-o", "labels": "--label", "env": "--env",
    "sites": "--site", "priority": "--priority", "max_retries": "--max-retries",
}  # fmt: skip


def command_line_job(args: argparse.Namespace) -> dict[str, Any]:
    """The ``submit`` flags as one job-file entry (pure)."""
    entry: dict[str, Any] = {}
    for key in _SINGLE_JOB_FLAGS:
        value = getattr(args, key)
        if value is not None:
            entry[key] = dict(value) if key in ("labels", "env") else value
    if args.argv:
        entry["argv"] = list(args.argv)
    return entry


def submit_drafts(args: argparse.Namespace, cwd: Path) -> list[JobDraft]:
    """The jobs ``submit`` would send, checked; reads nothing but a job file."""
    entry = command_line_job(args)
    if args.jobfile:
        if entry:
            flags = sorted({_SINGLE_JOB_FLAGS.get(k, "'-- COMMAND'") for k in entry})
            raise ValidationError(
                f"Options {', '.join(flags)} cannot be combined with the job file {args.jobfile}.",
                hint="Put job settings into the file ([defaults] applies to every job).",
            )
        return load_jobfile(args.jobfile)
    if "argv" not in entry and "script" not in entry:
        raise ValidationError(
            "Nothing to submit.",
            hint="Give a command after '--' (glidein submit -- python3 analyse.py), --script FILE, or a job file.",
        )
    drafts = build_drafts(entry, base_dir=cwd)
    check_all(drafts)
    return drafts


async def cmd_submit(args: argparse.Namespace) -> int:
    drafts = submit_drafts(args, Path.cwd())
    cfg = load_config(args)  # a missing URL or token is reported before large files are read
    local = await read_local_files(drafts)
    specs = [d.resolve(local) for d in drafts]
    tty = sys.stderr.isatty() and not args.json

    def progress(done: int, total: int) -> None:
        if tty:
            sys.stderr.write(f"\rUploading inputs: {done}/{total}\x1b[K" + ("\n" if done == total else ""))

    ids: list[int] = []
    async with connect(args, cfg) as api:
        uploaded = await upload_files(api, local, progress=progress)
        log.debug("uploaded %d distinct input files", uploaded)
        for start in range(0, len(specs), MAX_JOBS_PER_REQUEST):
            try:
                ids.extend(await api.submit(specs[start : start + MAX_JOBS_PER_REQUEST]))
            except GlideinError as exc:
                if not ids:
                    raise
                lastsubmit.remember(cfg.url, ids)
                raise type(exc)(
                    f"{exc.message} Jobs {render.compress_ids(ids)} were submitted before this; "
                    f"{len(specs) - len(ids)} were not.",
                    hint=exc.hint,
                    **exc.fields,
                ) from None
    lastsubmit.remember(cfg.url, ids)
    if args.json:
        emit_json({"ids": ids})
    else:
        print(f"Submitted {render.plural(len(ids), 'job')}: {render.compress_ids(ids)}")
    return EXIT_OK
