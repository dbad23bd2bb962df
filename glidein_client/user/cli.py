"""``glidein``: submit jobs, watch them, fetch their outputs.

    glidein submit --cpus 4 --memory 2G --walltime 10m -i data.txt -o result.txt -- python3 analyse.py data.txt
    glidein submit --script run.sh -i data.txt -o result.txt
    glidein submit jobs.toml                 # many jobs; see glidein_client/user/jobfile.py or examples/jobs.toml
    glidein status [IDS...] [--state S] [--label k=v] [--all]
    glidein wait [IDS...] [--timeout 10m] [--label k=v]
    glidein fetch IDS [-d DIR]
    glidein cancel IDS / glidein retry IDS
    glidein logs ID [--attempt N]

IDS are numbers and ranges: ``7``, ``1-20``, ``1-5,9``. Every command takes ``--json`` for scripts.
The server and token come from ``--url``/``--token-file``, the environment or the config file
(see :mod:`glidein_client.user.config`).

Exit codes: 0 success; 1 an error (or, for ``wait``, a job that failed or was cancelled);
2 a usage error; 3 ``wait`` timed out; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from glidein_client.user import config as user_config
from glidein_client.user import render
from glidein_client.user.config import UserConfig
from glidein_client.user.jobfile import (
    JobDraft,
    bounded,
    build_drafts,
    check_all,
    load_jobfile,
    read_local_files,
    upload_files,
)
from glidein_client.wire.api import ApiClient
from glidein_client.wire.codec import encode
from glidein_client.wire.errors import AuthError, ForbiddenError, GlideinError, NotFoundError, ValidationError
from glidein_client.wire.rules import check_relative_path
from glidein_client.wire.schema import MAX_JOBS_PER_REQUEST, AttemptView, JobList, JobState, JobView
from glidein_client.wire.units import format_duration, parse_duration_s, parse_memory_mb

log = logging.getLogger(__name__)

IDS_PER_REQUEST = 500
STATUS_ROWS = 50
POLL_S = 1.0
CONCURRENCY = 8
EXIT_OK, EXIT_ERROR, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 3, 130  # argparse exits 2 on usage errors


# --- argument parsing ----------------------------------------------------------------------------


def parse_ids(words: Iterable[str]) -> list[int]:
    """``["1-3,7", "5"]`` -> ``[1, 2, 3, 7, 5]`` (first occurrence kept). Raises ValueError."""
    seen: dict[int, None] = {}
    for word in words:
        for part in word.split(","):
            part = part.strip()
            if not part:
                continue
            first, dash, last = part.partition("-")
            if not first.isdigit() or (dash and not last.isdigit()):
                raise ValueError(f"{part!r} is not a job id or a range like 1-20")
            lo, hi = int(first), int(last) if dash else int(first)
            if lo < 1 or hi < lo:
                raise ValueError(f"{part!r} is not a valid range; ids start at 1 and ranges go up, e.g. 1-20")
            if hi - lo >= 1_000_000:
                raise ValueError(f"the range {part!r} is too large (at most a million ids)")
            seen.update(dict.fromkeys(range(lo, hi + 1)))
    return list(seen)


def _arg(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Turn a parser that raises GlideinError/ValueError into an argparse type (usage error, exit 2)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except GlideinError as exc:
            # "memory: cannot read ..." -> "cannot read ...": argparse already names the option.
            field = exc.fields.get("field")
            message = exc.message.removeprefix(f"{field}: ") if field else exc.message
            raise argparse.ArgumentTypeError(message) from None
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    return key, value


def _label_filter(text: str) -> str:
    _key_value(text)
    return text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a whole number of at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts")
    common.add_argument("--url", default=argparse.SUPPRESS, help="server URL (or GLIDEIN_URL)")
    common.add_argument("--token-file", default=argparse.SUPPRESS, help="file holding your token")

    parser = argparse.ArgumentParser(
        prog="glidein",
        description="Run jobs on pilots at computing sites: submit, watch, fetch outputs.",
        epilog="Config: ~/.config/glidein/config.toml (url, token_file, ca_file) or GLIDEIN_URL, "
        "GLIDEIN_TOKEN_FILE. Set GLIDEIN_DEBUG=1 for details on errors.",
    )
    parser.add_argument("--json", action="store_true", default=False, help="print JSON for scripts")
    parser.add_argument("--url", default=None, help="server URL (or GLIDEIN_URL)")
    parser.add_argument("--token-file", default=None, help="file holding your token (or GLIDEIN_TOKEN_FILE)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    ids_type = _arg(lambda w: parse_ids([w]))

    p = sub.add_parser(
        "submit",
        parents=[common],
        help="submit one job (command after --), a script, or a job file",
        description="Submit one job: glidein submit [options] -- COMMAND ARGS...; or a script "
        "(--script FILE); or many jobs from a job file: glidein submit jobs.toml.",
    )
    p.add_argument("jobfile", nargs="?", help="a TOML job file (see examples/jobs.toml)")
    p.add_argument("--script", metavar="FILE", help="a script file to run instead of a command")
    p.add_argument("--cpus", type=_arg(_positive), help="cores (default 1)")
    p.add_argument("--memory", type=_arg(parse_memory_mb), help="memory, e.g. 512M, 2G (default 1G)")
    p.add_argument("--gpus", type=int, help="GPUs (default 0)")
    p.add_argument("--disk", type=_arg(parse_memory_mb), help="scratch disk, e.g. 10G (default 1G)")
    p.add_argument("--walltime", type=_arg(parse_duration_s), help="time limit, e.g. 90s, 10m, 2h (default 1h)")
    p.add_argument(
        "-i", "--input", dest="inputs", action="append", metavar="FILE[:NAME]|URL",
        help="input: a local file (uploaded; FILE:NAME renames it in the job) or an http(s) URL (repeatable)",
    )  # fmt: skip
    p.add_argument("-o", "--output", dest="outputs", action="append", metavar="NAME", help="output (repeatable)")
    p.add_argument(
        "--label", dest="labels", action="append", type=_arg(_key_value), metavar="K=V",
        help="label to find the job by later, e.g. dataset=run42 (repeatable)",
    )  # fmt: skip
    p.add_argument("--env", action="append", type=_arg(_key_value), metavar="K=V", help="environment variable")
    p.add_argument("--site", dest="sites", action="append", metavar="NAME", help="allowed site (repeatable)")
    p.add_argument("--priority", type=int, help="higher runs first (default 0)")
    p.add_argument("--max-retries", type=int, help="reruns after the job's own failure (default 2)")

    p = sub.add_parser("status", parents=[common], help="show jobs in a table")
    p.add_argument("ids", nargs="*", type=ids_type, metavar="IDS", help="ids or ranges, e.g. 1-20")
    p.add_argument("--state", choices=[s.value for s in JobState])
    p.add_argument("--label", type=_arg(_label_filter), metavar="K=V")
    p.add_argument("--all", action="store_true", help=f"list every job (default: at most {STATUS_ROWS} rows)")

    p = sub.add_parser("wait", parents=[common], help="wait until jobs are finished")
    p.add_argument("ids", nargs="*", type=ids_type, metavar="IDS")
    p.add_argument("--timeout", type=_arg(parse_duration_s), help="give up after this long, e.g. 10m (exit 3)")
    p.add_argument("--label", type=_arg(_label_filter), metavar="K=V")

    p = sub.add_parser("fetch", parents=[common], help="download outputs to DIR/<job id>/")
    p.add_argument("ids", nargs="+", type=ids_type, metavar="IDS")
    p.add_argument("-d", "--dir", default=".", help="where to put them (default: current directory)")

    for name, text in (("cancel", "cancel jobs"), ("retry", "run failed or cancelled jobs again")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("ids", nargs="+", type=ids_type, metavar="IDS")

    p = sub.add_parser("logs", parents=[common], help="attempts of a job with their output tails")
    p.add_argument("id", type=_arg(_positive), metavar="ID")
    p.add_argument("--attempt", type=_arg(_positive), metavar="N", help="only the N-th attempt (1 = first)")
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; for ``submit`` everything after the first ``--`` is the job's command."""
    argv = list(argv)
    parser = build_parser()
    command: list[str] = []
    if _command_word(argv) == "submit" and "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
        if not command:
            parser.error("nothing follows '--'; give the command to run, e.g. -- python3 analyse.py")
    args = parser.parse_args(argv)
    args.argv = command
    if hasattr(args, "ids"):
        args.ids = list(dict.fromkeys(i for group in args.ids for i in group))
    return args


def _command_word(argv: Sequence[str]) -> str | None:
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in ("--url", "--token-file"):
            skip = True
        elif word == "--":
            return None
        elif not word.startswith("-"):
            return word
    return None


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


# --- plumbing ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connect(args: argparse.Namespace, cfg: UserConfig | None = None) -> AsyncIterator[ApiClient]:
    cfg = cfg or load_config(args)
    async with ApiClient(cfg.url, cfg.token, ca_file=cfg.ca_file) as api:
        try:
            yield api
        except AuthError as exc:
            if isinstance(exc, ForbiddenError):
                raise
            hint = exc.hint or "Check it, or ask your operator for a new one."
            raise AuthError(exc.message, hint=f"{hint} The token came from {cfg.token_source}.", **exc.fields) from None


def load_config(args: argparse.Namespace) -> UserConfig:
    return user_config.load(url=args.url, token_file=args.token_file)


def emit_json(obj: Any) -> None:
    sys.stdout.write(encode(obj).decode() + "\n")


def _about(what: str, message: str) -> str:
    """``job 5`` + ``Job 5 does not exist.`` -> ``Job 5 does not exist.``, not ``job 5: Job 5 ...``."""
    return message if message.lower().startswith(f"{what.lower()} ") else f"{what}: {message}"


def _stop_if_refused(exc: GlideinError) -> None:
    """Errors about one job are reported and the others still done; a refused token stops all."""
    if isinstance(exc, AuthError) and not isinstance(exc, ForbiddenError):
        raise exc


async def jobs_by_ids(
    api: ApiClient, ids: Sequence[int], *, state: str | None = None, label: str | None = None
) -> JobList:
    """The jobs among ``ids`` (in id order); ``counts`` covers them all, whatever ``state`` is."""
    chunks = [list(ids[i : i + IDS_PER_REQUEST]) for i in range(0, len(ids), IDS_PER_REQUEST)]

    async def one(chunk: list[int]) -> JobList:
        return await api.list_jobs(ids=chunk, state=state, label=label, limit=len(chunk))

    pages = await bounded(4, one, chunks)
    counts: dict[str, int] = {}
    for page in pages:
        for key, n in page.counts.items():
            counts[key] = counts.get(key, 0) + n
    jobs = sorted((job for page in pages for job in page.jobs), key=lambda j: j.id)
    return JobList(jobs=jobs, counts=counts or render.count_states(jobs))


async def list_all(api: ApiClient, *, state: str | None, label: str | None) -> JobList:
    """Page through every matching job; ``counts`` is the server's count over all of them."""
    jobs: list[JobView] = []
    counts: dict[str, int] = {}
    while True:
        got = await api.list_jobs(state=state, label=label, limit=1000, offset=len(jobs))
        counts = counts or dict(got.counts)
        jobs.extend(got.jobs)
        if len(got.jobs) < 1000:
            return JobList(jobs=jobs, counts=counts)


def _require_found(ids: Sequence[int], jobs: Sequence[JobView]) -> None:
    missing = sorted(set(ids) - {j.id for j in jobs})
    if missing:
        raise NotFoundError(
            f"No job {render.compress_ids(missing)} (or not yours).",
            hint="Check the ids with: glidein status",
        )


# --- commands ----------------------------------------------------------------------------------


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
                raise type(exc)(
                    f"{exc.message} Jobs {render.compress_ids(ids)} were submitted before this; "
                    f"{len(specs) - len(ids)} were not.",
                    hint=exc.hint,
                    **exc.fields,
                ) from None
    if args.json:
        emit_json({"ids": ids})
    else:
        print(f"Submitted {render.plural(len(ids), 'job')}: {render.compress_ids(ids)}")
    return EXIT_OK


async def cmd_status(args: argparse.Namespace) -> int:
    missing: list[int] = []
    async with connect(args) as api:
        if args.ids:
            result = await jobs_by_ids(api, args.ids, state=args.state, label=args.label)
            if not args.state and not args.label:
                missing = sorted(set(args.ids) - {j.id for j in result.jobs})
        else:
            result = await _status_list(api, args)
    if args.json:
        emit_json(result)
    else:
        total = sum(result.counts.values())
        matching = result.counts.get(args.state, 0) if args.state else total
        if result.jobs:
            print(render.jobs_table(result.jobs))
        if matching > len(result.jobs):
            print(f"... {matching - len(result.jobs)} earlier jobs not shown; --all lists every job.")
        print(f"{render.plural(total, 'job')}: {render.format_counts(result.counts)}" if total else "No jobs.")
    if missing:
        print(f"error: no job {render.compress_ids(missing)} (or not yours).", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


async def _status_list(api: ApiClient, args: argparse.Namespace) -> JobList:
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


@dataclass
class Snapshot:
    counts: dict[str, int]
    bad: list[int] = field(default_factory=list)  # failed or cancelled, when the jobs were listed
    notes: dict[str, list[int]] = field(default_factory=dict)  # why unfinished jobs wait -> their ids


async def _poll(api: ApiClient, args: argparse.Namespace) -> Snapshot:
    if args.ids:
        jobs = (await jobs_by_ids(api, args.ids, label=args.label)).jobs
        if not args.label:
            _require_found(args.ids, jobs)
    else:
        first = await api.list_jobs(label=args.label, limit=1)
        if first.counts:
            return Snapshot(dict(first.counts))
        jobs = (await list_all(api, state=None, label=args.label)).jobs
    snap = Snapshot(render.count_states(jobs))
    for job in jobs:
        if job.state in (JobState.FAILED, JobState.CANCELLED):
            snap.bad.append(job.id)
        elif not job.state.final and job.note:
            snap.notes.setdefault(job.note, []).append(job.id)
    return snap


async def cmd_wait(args: argparse.Namespace) -> int:
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    progress = render.Progress(sys.stderr)
    timed_out = False
    told: set[str] = set()
    async with connect(args) as api:
        try:
            while True:
                snap = await _poll(api, args)
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
        finally:
            progress.close()
    failed = counts.get("failed", 0) + counts.get("cancelled", 0)
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


async def cmd_fetch(args: argparse.Namespace) -> int:
    dest = Path(args.dir)
    fetched: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    notes: list[str] = []
    async with connect(args) as api:
        jobs = (await jobs_by_ids(api, args.ids)).jobs
        for missing in sorted(set(args.ids) - {j.id for j in jobs}):
            errors.append({"id": missing, "error": f"no job {missing} (or not yours)"})
        items: list[tuple[JobView, str, str, int]] = []
        for job in jobs:
            if not job.outputs:
                notes.append(f"job {job.id}: {job.state.value}, no outputs" + ("" if job.state.final else " yet"))
            items.extend((job, o.name, o.sha256, o.size) for o in job.outputs)

        async def one(item: tuple[JobView, str, str, int]) -> None:
            job, name, sha256, size = item
            try:
                path, fresh = await _fetch_one(api, dest, job.id, name, sha256)
            except GlideinError as exc:
                _stop_if_refused(exc)
                errors.append({"id": job.id, "name": name, "error": exc.message})
            else:
                fetched.append({"id": job.id, "name": name, "path": str(path), "size": size, "fresh": fresh})

        await bounded(CONCURRENCY, one, items)
    fetched.sort(key=lambda f: (f["id"], f["name"]))
    if args.json:
        emit_json({"fetched": fetched, "errors": errors})
    else:
        for f in fetched:
            state = "" if f["fresh"] else "  (already there)"
            print(f"{f['path']}  {render.format_size(f['size'])}{state}")
        for note in notes:
            print(note)
        fresh = [f for f in fetched if f["fresh"]]
        size = sum(f["size"] for f in fresh)
        there = f"; {len(fetched) - len(fresh)} already there" if len(fresh) < len(fetched) else ""
        print(f"Fetched {render.plural(len(fresh), 'file')} ({render.format_size(size)}) into {dest}{there}")
    for err in errors:
        what = f"job {err['id']}" + (f" output {err['name']!r}" if "name" in err else "")
        print(f"error: {_about(what, err['error'])}", file=sys.stderr)
    return EXIT_ERROR if errors else EXIT_OK


async def _fetch_one(api: ApiClient, dest: Path, job_id: int, name: str, sha256: str) -> tuple[Path, bool]:
    rel = check_relative_path(name, field="output name")
    job_dir = dest / str(job_id)
    target = job_dir / rel
    if not target.resolve().is_relative_to(job_dir.resolve()):
        raise ValidationError(f"{name!r} would be written outside {job_dir}; not fetched.")
    if target.is_file() and (await asyncio.to_thread(_sha256_of, target)) == sha256:
        return target, False
    data = await api.fetch_output(job_id, name)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ValidationError("the downloaded copy does not match its sha256 checksum; try again.")
    await asyncio.to_thread(_write_atomic, target, data)
    return target, True


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, target)


async def cmd_change(args: argparse.Namespace) -> int:
    results: dict[int, dict[str, Any]] = {}
    async with connect(args) as api:
        action = api.cancel if args.command == "cancel" else api.retry

        async def one(job_id: int) -> None:
            try:
                view = await action(job_id)
            except GlideinError as exc:
                _stop_if_refused(exc)
                results[job_id] = {"id": job_id, "error": exc.message, "hint": exc.hint}
            else:
                results[job_id] = {"id": job_id, "state": view.state.value}

        await bounded(CONCURRENCY, one, args.ids)
    ordered = [results[i] for i in args.ids]
    if args.json:
        emit_json({"jobs": ordered})
    for r in ordered:
        if "error" in r:
            hint = f" {r['hint']}" if r.get("hint") else ""
            what = f"job {r['id']}"
            print(f"error: {_about(what, r['error'])}{hint}", file=sys.stderr)
        elif not args.json:
            print(f"job {r['id']}: {r['state']}")
    return EXIT_ERROR if any("error" in r for r in ordered) else EXIT_OK


async def cmd_logs(args: argparse.Namespace) -> int:
    async with connect(args) as api:
        attempts = sorted(await api.attempts(args.id), key=lambda a: (a.claimed_at, a.id))
        job = None if attempts else await api.get_job(args.id)
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
    if job is not None:
        note = f": {render.job_note(job)}" if render.job_note(job) else ""
        print(f"Job {job.id} has not run yet ({job.state.value}){note}")
    for n, attempt in numbered:
        print(_attempt_text(n, len(attempts), attempt))
    return EXIT_OK


def _attempt_text(n: int, total: int, a: AttemptView) -> str:
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
    for name, tail in (("stdout", a.stdout_tail), ("stderr", a.stderr_tail)):
        lines.append(f"--- {name} (last part) ---" if tail else f"--- {name}: empty ---")
        if tail:
            lines.append(tail.rstrip("\n"))
    return "\n".join(lines) + "\n"


_HANDLERS = {
    "submit": cmd_submit,
    "status": cmd_status,
    "wait": cmd_wait,
    "fetch": cmd_fetch,
    "cancel": cmd_change,
    "retry": cmd_change,
    "logs": cmd_logs,
}


# --- entry point -------------------------------------------------------------------------------


def run(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code; errors become plain messages."""
    debug = os.environ.get("GLIDEIN_DEBUG", "") not in ("", "0")
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return asyncio.run(_HANDLERS[args.command](args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except GlideinError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (e.g. `glidein status | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set GLIDEIN_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_ERROR


def main() -> NoReturn:
    sys.exit(run())


if __name__ == "__main__":
    main()
