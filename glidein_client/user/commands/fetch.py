"""``glidein fetch``: download outputs to DIR/<job id>/, checked against their sha256."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glidein_client.user import render
from glidein_client.user.jobfile import bounded
from glidein_client.user.selection import add_selection, labelled
from glidein_client.user.session import (
    CONCURRENCY,
    EXIT_ERROR,
    EXIT_OK,
    RideOut,
    about,
    connect,
    emit_json,
    jobs_by_ids,
    stop_if_refused,
)
from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import GlideinError, ValidationError
from glidein_client.wire.rules import check_relative_path
from glidein_client.wire.schema import JobState, JobView


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fetch", parents=[common], help="download outputs to DIR/<job id>/")
    add_selection(p, required=True)
    p.add_argument("-d", "--dir", default=".", help="where to put them (default: current directory)")
    p.set_defaults(handler=cmd_fetch)


async def cmd_fetch(args: argparse.Namespace) -> int:
    dest = Path(args.dir)
    fetched: list[dict[str, Any]] = []
    patiently = RideOut()
    async with connect(args) as api:
        if args.label:  # the caller's jobs carrying every label (among the ids, when given)
            jobs = (await patiently(lambda: labelled(api, args.ids, args.label))).jobs
            items, errors, notes = _plan([j.id for j in jobs], jobs)
        else:
            jobs = (await patiently(lambda: jobs_by_ids(api, args.ids))).jobs
            items, errors, notes = _plan(args.ids, jobs)

        async def one(item: tuple[JobView, str, str, int]) -> None:
            job, name, sha256, size = item
            try:
                path, fresh = await patiently(lambda: fetch_one(api, dest, job.id, name, sha256))
            except GlideinError as exc:
                stop_if_refused(exc)
                errors.append({"id": job.id, "name": name, "error": exc.message})
            else:
                got = {"id": job.id, "name": name, "path": str(path), "size": size, "fresh": fresh}
                fetched.append({**got, "job": job.state.value})

        await bounded(CONCURRENCY, one, items)
    fetched.sort(key=lambda f: (f["id"], f["name"]))
    if args.json:
        emit_json({"fetched": fetched, "errors": errors, "notes": notes})
    else:
        _print_fetched(dest, fetched, notes, nothing=bool(errors))
    for err in errors:
        what = f"job {err['id']}" + (f" output {err['name']!r}" if "name" in err else "")
        print(f"error: {about(what, err['error'])}", file=sys.stderr)
    return EXIT_ERROR if errors else EXIT_OK


def _plan(
    ids: Sequence[int], jobs: Sequence[JobView]
) -> tuple[list[tuple[JobView, str, str, int]], list[dict[str, Any]], list[str]]:
    """``(outputs to fetch, errors, notes)``: a job whose asked-for outputs did not come back is an
    error; the outputs a failed job left are fetched, with a note that it failed."""
    unknown = sorted(set(ids) - {j.id for j in jobs})
    errors: list[dict[str, Any]] = [{"id": i, "error": f"no job {i} (or not yours)"} for i in unknown]
    notes: list[str] = []
    items: list[tuple[JobView, str, str, int]] = []
    for job in jobs:
        if not job.outputs and job.spec.outputs:
            why = "no outputs came back" if job.state.final else "no outputs yet"
            errors.append({"id": job.id, "error": f"{_state(job)}, {why} (asked for {', '.join(job.spec.outputs)})"})
        elif not job.outputs:
            notes.append(f"job {job.id}: {job.state.value}, declares no outputs")
        elif job.state is not JobState.DONE:
            notes.append(_partial_note(job))
        items.extend((job, o.name, o.sha256, o.size) for o in job.outputs)
    return items, errors, notes


def _print_fetched(dest: Path, fetched: list[dict[str, Any]], notes: list[str], *, nothing: bool) -> None:
    for f in fetched:
        state = "" if f["fresh"] else "  (already there)"
        print(f"{f['path']}  {render.format_size(f['size'])}{state}")
    for note in notes:
        print(note)
    fresh = [f for f in fetched if f["fresh"]]
    size = sum(f["size"] for f in fresh)
    there = f"; {len(fetched) - len(fresh)} already there" if len(fresh) < len(fetched) else ""
    if fetched:
        print(f"Fetched {render.plural(len(fresh), 'file')} ({render.format_size(size)}) into {dest}{there}")
    elif nothing:
        print("Nothing was fetched.")


def _state(job: JobView) -> str:
    """``failed (exit code 1)`` (or why) for a failed job, else its state."""
    if job.state is JobState.FAILED and job.exit_code:
        return f"failed (exit code {job.exit_code})"
    if job.state is JobState.FAILED and job.reason:
        return f"failed ({job.reason})"
    return job.state.value


def _partial_note(job: JobView) -> str:
    """What to know about outputs that came back from a job that did not succeed."""
    got = {o.name for o in job.outputs}
    left = [name for name in job.spec.outputs if name not in got]
    text = f"job {job.id}: {_state(job)}; these are the outputs it left"
    if left:
        text += f" (it left no {', '.join(left)})"
    return f"{text}. See: glidein logs {job.id}"


async def fetch_one(api: ApiClient, dest: Path, job_id: int, name: str, sha256: str) -> tuple[Path, bool]:
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
