"""Jobs before they are submitted: drafts whose local files are known by path, checked, then read.

A :class:`JobDraft` comes from a job file or the command line. :func:`check_all` runs every job
rule on the drafts with stand-ins for files not read yet and reports every problem at once;
:func:`read_local_files` hashes inputs and reads scripts (a file that cannot be read names its
job); :func:`upload_files` uploads each distinct input once.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from glidein_client.user.problems import raise_all
from glidein_client.user.tasks import bounded
from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import ValidationError
from glidein_client.wire.rules import check_job
from glidein_client.wire.schema import InputFile, JobSpec

_PLACEHOLDER_SHA = "0" * 64
_PLACEHOLDER_SCRIPT = "#!/bin/sh\n"
UPLOAD_CONCURRENCY = 8


@dataclass(frozen=True)
class LocalInput:
    """An input that is a local file: uploaded before submitting, then named by its sha256."""

    index: int  # position in the job's inputs
    path: Path


@dataclass(frozen=True)
class JobDraft:
    """A job whose local files (inputs, script) are known by path but not read yet."""

    spec: JobSpec  # local inputs carry only a name; ``script`` is empty while ``script_path`` is set
    local_inputs: tuple[LocalInput, ...] = ()
    script_path: Path | None = None
    source: str = "command line"  # the job file, for messages
    label: str = ""  # "job[3]" in a job file
    index: int | None = None  # the {index} of this copy when the job has a count

    def error(self, exc: ValidationError) -> ValidationError:
        """Name the file, job and copy in an error about one of this job's fields."""
        return in_job(exc, self.source, self.label, self.index)

    def check(self) -> None:
        """Run every rule of :func:`schema.check_job`, with stand-ins for files not read yet."""
        try:
            check_job(self.resolve(_Stand()))
        except ValidationError as exc:
            raise self.error(exc) from None

    def resolve(self, files: LocalFiles | _Stand) -> JobSpec:
        """The job spec with uploaded inputs named by sha256 and the script's text filled in."""
        inputs = list(self.spec.inputs)
        for local in self.local_inputs:
            sha256, size = files.digest(local.path)
            inputs[local.index] = InputFile(name=inputs[local.index].name, sha256=sha256, size=size)
        script = files.script(self.script_path) if self.script_path is not None else self.spec.script
        return msgspec.structs.replace(self.spec, inputs=inputs, script=script)


@dataclass
class LocalFiles:
    """What was read from disk: sha256 and size of each local input, text of each script."""

    digests: dict[Path, tuple[str, int]] = field(default_factory=dict)
    scripts: dict[Path, str] = field(default_factory=dict)

    def digest(self, path: Path) -> tuple[str, int]:
        return self.digests[path]

    def script(self, path: Path) -> str:
        return self.scripts[path]


class _Stand:
    """Stand-ins used to validate a draft before any file is read."""

    def digest(self, path: Path) -> tuple[str, int]:
        return _PLACEHOLDER_SHA, 0

    def script(self, path: Path) -> str:
        return _PLACEHOLDER_SCRIPT


def check_all(drafts: Iterable[JobDraft]) -> None:
    """Every rule on every draft; all problems at once (of the copies of one job, the first only)."""
    errors: list[ValidationError] = []
    seen: set[tuple[str, str, object]] = set()
    source = "command line"
    for draft in drafts:
        source = draft.source
        try:
            draft.check()
        except ValidationError as exc:
            if draft.index is not None:
                key = (draft.source, draft.label, exc.fields.get("field"))
                if key in seen:
                    continue
                seen.add(key)
            errors.append(exc)
    raise_all(errors, source)


def in_job(exc: ValidationError, source: str, label: str, index: int | None) -> ValidationError:
    """``outputs[0]: ...`` becomes ``jobs.toml: job[3].outputs[0]: ...``."""
    message = exc.message
    field_ = exc.fields.get("field")
    if label:
        message = f"{label}.{message}"
        field_ = f"{label}.{field_}" if field_ else label
    if index is not None:
        message = f"{message.rstrip('.')} (in the copy with index {index})."
    hint = exc.hint
    if field_ and field_.endswith("argv") and source != "command line":
        hint = 'Give the job argv = ["program", "arg", ...] or script = "file.sh".'
    return ValidationError(f"{source}: {message}", hint=hint, field=field_, file=source)


async def read_local_files(drafts: Sequence[JobDraft], *, concurrency: int = UPLOAD_CONCURRENCY) -> LocalFiles:
    """Hash every local input and read every script once; a missing file names its job."""
    first_use: dict[Path, tuple[JobDraft, str]] = {}
    for draft in drafts:
        for local in draft.local_inputs:
            first_use.setdefault(local.path, (draft, f"inputs[{local.index}]"))
        if draft.script_path is not None:
            first_use.setdefault(draft.script_path, (draft, "script"))
    files = LocalFiles()

    async def read(item: tuple[Path, tuple[JobDraft, str]]) -> None:
        path, (draft, field_) = item
        try:
            if field_ == "script":
                text = await asyncio.to_thread(path.read_text, encoding="utf-8")
                if not text.strip():
                    raise draft.error(ValidationError(f"script: {path} is empty.", field="script"))
                files.scripts[path] = text
            else:
                files.digests[path] = await asyncio.to_thread(_sha256_file, path)
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise draft.error(
                ValidationError(
                    f"{field_}: cannot read {path}: {why}.",
                    hint="Check the path; relative paths are read from the job file's directory "
                    "(or the current directory on the command line).",
                    field=field_,
                )
            ) from None

    async def gather(item: tuple[Path, tuple[JobDraft, str]]) -> None:
        try:
            await read(item)
        except ValidationError as exc:
            errors[item[0]] = exc

    errors: dict[Path, ValidationError] = {}
    await bounded(concurrency, gather, first_use.items())
    raise_all([errors[path] for path in first_use if path in errors], drafts[0].source if drafts else "")
    return files


async def upload_files(
    api: ApiClient,
    files: LocalFiles,
    *,
    concurrency: int = UPLOAD_CONCURRENCY,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Upload each distinct input once (by sha256); return how many were uploaded."""
    by_sha: dict[str, Path] = {}
    for path, (sha256, _size) in files.digests.items():
        by_sha.setdefault(sha256, path)
    done = 0

    async def upload(item: tuple[str, Path]) -> None:
        nonlocal done
        sha256, path = item
        stored = await api.upload_file(path)
        if stored.sha256 != sha256:
            raise ValidationError(
                f"The file {path} changed while it was being uploaded.",
                hint="Wait until whatever writes it has finished, then submit again.",
            )
        done += 1
        if progress is not None:
            progress(done, len(by_sha))

    await bounded(concurrency, upload, by_sha.items())
    return len(by_sha)


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
