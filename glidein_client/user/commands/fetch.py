"""``glidein fetch``: download outputs to DIR/<job id>/, checked against their sha256."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from glidein_client.user import render
from glidein_client.user.args import add_ids
from glidein_client.user.jobfile import bounded
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
from glidein_client.wire.schema import JobView


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fetch", parents=[common], help="download outputs to DIR/<job id>/")
    add_ids(p, required=True)
    p.add_argument("-d", "--dir", default=".", help="where to put them (default: current directory)")
    p.set_defaults(handler=cmd_fetch)


async def cmd_fetch(args: argparse.Namespace) -> int:
    dest = Path(args.dir)
    fetched: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    notes: list[str] = []
    patiently = RideOut()
    async with connect(args) as api:
        jobs = (await patiently(lambda: jobs_by_ids(api, args.ids))).jobs
        for missing in sorted(set(args.ids) - {j.id for j in jobs}):
            errors.append({"id": missing, "error": f"no job {missing} (or not yours)"})
        items: list[tuple[JobView, str, str, int]] = []
        for job in jobs:
            if not job.outputs and job.spec.outputs:
                why = "no outputs came back" if job.state.final else "no outputs yet"
                errors.append(
                    {"id": job.id, "error": f"{job.state.value}, {why} (asked for {', '.join(job.spec.outputs)})"}
                )
            elif not job.outputs:
                notes.append(f"job {job.id}: {job.state.value}, declares no outputs")
            items.extend((job, o.name, o.sha256, o.size) for o in job.outputs)

        async def one(item: tuple[JobView, str, str, int]) -> None:
            job, name, sha256, size = item
            try:
                path, fresh = await patiently(lambda: fetch_one(api, dest, job.id, name, sha256))
            except GlideinError as exc:
                stop_if_refused(exc)
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
        print(f"error: {about(what, err['error'])}", file=sys.stderr)
    return EXIT_ERROR if errors else EXIT_OK


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
