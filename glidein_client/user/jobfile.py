"""Job files: many jobs described in one TOML file, turned into validated job specs.

A job file has an optional ``[defaults]`` table and one ``[[job]]`` table per job::

    [defaults]                      # optional; any job key, used where a job does not set it
    cpus = 1
    memory = "1G"
    walltime = "10m"
    labels = { dataset = "run42" }  # labels and env from defaults and job are merged

    [[job]]
    argv = ["python3", "analyse.py", "a.txt"]   # or: script = "path/to/script.sh"
    inputs = ["a.txt", "analyse.py", "https://example.org/x.dat", { path = "b.txt", name = "in/b.txt" }]
    outputs = ["result.txt"]
    cpus = 2
    count = 10                      # optional: submit this job 10 times, see below

Job keys:

``argv``
    The command, as a list of words (no shell).
``script``
    A script file; its text is sent and run in the job's directory. Give ``argv`` or ``script``.
``inputs``
    Files placed in the job's directory. A local path is uploaded (its name in the job is its
    base name; ``"path:name"`` or ``{ path = "...", name = "..." }`` renames it); an
    ``http(s)://`` URL is downloaded by the job (``{ url = "...", name = "..." }`` renames it).
``outputs``
    Relative paths in the job's directory that are sent back when the job ends.
``cpus``, ``gpus``
    Whole numbers (default 1 cpu, 0 gpus).
``memory``, ``disk``
    ``"512M"``, ``"2G"``, ``"1T"``, or a plain number of megabytes (default 1G each).
``walltime``
    ``"90s"``, ``"10m"``, ``"2h"``, ``"1d"``, ``"HH:MM:SS"``, or a plain number of seconds (default 1h).
``env``, ``labels``
    Tables of strings: environment variables for the job; labels to find jobs by
    (``glidein status --label dataset=run42``).
``sites``
    A list of site names the job may run at (default: any site).
``priority``
    A whole number; higher runs first (default 0).
``max_retries``
    How often a job that failed by its own fault is run again (default 0). A job killed for its
    memory or walltime is retried with a bigger request regardless (twice, by default).
``count``
    Submit the job this many times; ``{index}`` in ``argv``, ``inputs``, ``outputs`` and
    ``env`` values becomes 0, 1, ..., count-1.

Relative paths (inputs, scripts) are read relative to the job file's directory. Any other key
is an error naming the file, the job and the key (``job[0]`` is the first ``[[job]]``); nothing
is uploaded or submitted until every job in the file is valid and every local file is readable.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import posixpath
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import ValidationError
from glidein_client.wire.rules import check_job
from glidein_client.wire.schema import InputFile, JobSpec
from glidein_client.wire.units import parse_duration_s, parse_memory_mb

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")
A = TypeVar("A")

JOB_KEYS = (
    "argv", "script", "inputs", "outputs", "cpus", "gpus", "memory", "disk", "walltime",
    "env", "labels", "sites", "priority", "max_retries", "count",
)  # fmt: skip
_RENAMED = {"memory_mb": "memory", "disk_mb": "disk", "walltime_s": "walltime"}
_MERGED = ("env", "labels")
_PLACEHOLDER_SHA = "0" * 64
_PLACEHOLDER_SCRIPT = "#!/bin/sh\n"
MAX_COUNT = 1_000_000
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
        return _in_job(exc, self.source, self.label, self.index)

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


# --- parsing -----------------------------------------------------------------------------------


def load_jobfile(path: str | Path) -> list[JobDraft]:
    """Read a job file and return one validated draft per job (``count`` expanded)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ValidationError(
            f"The job file {path} does not exist.",
            hint="To run a command instead, put it after '--': glidein submit -- python3 analyse.py",
        ) from None
    except OSError as exc:
        raise ValidationError(f"Cannot read the job file {path}: {exc.strerror}.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(
            f"The job file {path} is not valid TOML: {exc}.",
            hint="To run a command instead, put it after '--': glidein submit -- python3 analyse.py",
        ) from None
    drafts = parse_jobfile(raw, source=str(path), base_dir=path.resolve().parent)
    check_all(drafts)
    return drafts


def parse_jobfile(raw: Mapping[str, Any], *, source: str, base_dir: Path) -> list[JobDraft]:
    """Turn a parsed job file into drafts; pure apart from nothing: no file is read."""
    for key in raw:
        if key not in ("defaults", "job"):
            raise ValidationError(
                f"{source}: unknown key {key!r}{_did_you_mean(key, ('defaults', 'job'))}.",
                hint="A job file has an optional [defaults] table and one [[job]] table per job.",
                field=key,
            )
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ValidationError(f"{source}: defaults must be a table ([defaults]).", field="defaults")
    _check_keys(defaults, source, "defaults")
    jobs = raw.get("job", [])
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        raise ValidationError(f"{source}: job must be a list of tables, written [[job]].", field="job", file=source)
    if not jobs:
        raise ValidationError(
            f"{source}: the file has no jobs.",
            hint="Add at least one [[job]] table.",
            field="job",
            file=source,
        )
    drafts: list[JobDraft] = []
    for i, entry in enumerate(jobs):
        merged = {**defaults, **entry}
        for key in _MERGED:
            if isinstance(defaults.get(key), dict) and isinstance(entry.get(key), dict):
                merged[key] = {**defaults[key], **entry[key]}
        drafts.extend(build_drafts(merged, base_dir=base_dir, source=source, label=f"job[{i}]"))
    return drafts


def build_drafts(
    entry: Mapping[str, Any], *, base_dir: Path, source: str = "command line", label: str = ""
) -> list[JobDraft]:
    """One job entry (job-file keys) to drafts, one per ``count``. Pure: reads no file."""
    _check_keys(entry, source, label)
    if "count" not in entry:
        return [_build_one(entry, base_dir, source, label, None)]
    count = entry["count"]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise _in_job(
            ValidationError(f"count: must be a whole number from 1 to {MAX_COUNT}, got {count!r}.", field="count"),
            source,
            label,
            None,
        )
    return [_build_one(_substitute(entry, i), base_dir, source, label, i) for i in range(count)]


def check_all(drafts: Iterable[JobDraft]) -> None:
    for draft in drafts:
        draft.check()


def _build_one(entry: Mapping[str, Any], base_dir: Path, source: str, label: str, index: int | None) -> JobDraft:
    try:
        data: dict[str, Any] = {}
        for key, value in entry.items():
            if key in ("count", "inputs", "script"):
                continue
            if key == "memory":
                data["memory_mb"] = _amount(value, "memory", parse_memory_mb)
            elif key == "disk":
                data["disk_mb"] = _amount(value, "disk", parse_memory_mb)
            elif key == "walltime":
                data["walltime_s"] = _amount(value, "walltime", parse_duration_s)
            else:
                data[key] = value
        spec = _convert_spec(data)
        inputs, local = _inputs(entry.get("inputs", []), base_dir)
        script_path = None
        if "script" in entry:
            if not isinstance(entry["script"], str) or not entry["script"]:
                raise ValidationError(f"script: must be the path of a script file, got {entry['script']!r}.")
            script_path = _local_path(entry["script"], base_dir)
    except ValidationError as exc:
        raise _in_job(exc, source, label, index) from None
    return JobDraft(
        spec=msgspec.structs.replace(spec, inputs=inputs),
        local_inputs=tuple(local),
        script_path=script_path,
        source=source,
        label=label,
        index=index,
    )


def _convert_spec(data: dict[str, Any]) -> JobSpec:
    try:
        return msgspec.convert(data, type=JobSpec, strict=True)
    except msgspec.ValidationError as exc:
        text, _, path = str(exc).partition(" - at `")
        where = path.rstrip("`").removeprefix("$").removeprefix(".") or "job"
        head, dot, rest = where.partition(".")
        head = _RENAMED.get(head, head)
        where = head + dot + rest
        if head in ("memory", "disk"):
            text += " (in megabytes)"
        elif head == "walltime":
            text += " (in seconds)"
        raise ValidationError(f"{where}: {text}.", field=where) from None


def _amount(value: Any, name: str, parse: Callable[..., int]) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValidationError(
            f"{name}: cannot read {value!r}; write a whole number or a string with a unit.",
            hint='E.g. memory = "2G", walltime = "10m", or plain megabytes / seconds.',
            field=name,
        )
    return int(parse(value, field=name))


def _inputs(raw: Any, base_dir: Path) -> tuple[list[InputFile], list[LocalInput]]:
    if not isinstance(raw, list):
        raise ValidationError(f"inputs: must be a list, got {raw!r}.", field="inputs")
    inputs: list[InputFile] = []
    local: list[LocalInput] = []
    for i, item in enumerate(raw):
        where = f"inputs[{i}]"
        if isinstance(item, str):
            if item.startswith(("http://", "https://")):
                url, name, path = item, None, None
            else:
                path, sep, name_ = item.rpartition(":")
                path, name = (path, name_) if sep and path else (item, None)
                url = None
        elif isinstance(item, dict):
            unknown = set(item) - {"path", "url", "name"}
            if unknown or ("path" in item) == ("url" in item):
                raise ValidationError(
                    f"{where}: an input table needs either path or url, and optionally name.",
                    hint='E.g. { path = "b.txt", name = "in/b.txt" } or { url = "https://...", name = "x" }.',
                    field=where,
                )
            if not all(isinstance(v, str) and v for v in item.values()):
                raise ValidationError(f"{where}: path, url and name must be non-empty strings.", field=where)
            path, url, name = item.get("path"), item.get("url"), item.get("name")
        else:
            raise ValidationError(f"{where}: must be a path, a URL or a table, got {item!r}.", field=where)
        if url is not None:
            if not url.startswith(("http://", "https://")):
                raise ValidationError(f"{where}: only http(s) URLs are supported, got {url!r}.", field=where)
            name = name or posixpath.basename(urlsplit(url).path)
            if not name:
                raise ValidationError(
                    f"{where}: cannot tell a file name from the URL {url!r}.",
                    hint='Name it: { url = "...", name = "x.dat" }.',
                    field=where,
                )
            inputs.append(InputFile(name=name, url=url))
        else:
            assert path is not None
            resolved = _local_path(path, base_dir)
            local.append(LocalInput(index=len(inputs), path=resolved))
            inputs.append(InputFile(name=name or resolved.name))
    return inputs, local


def _local_path(text: str, base_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base_dir / path


def _substitute(entry: Mapping[str, Any], index: int) -> dict[str, Any]:
    def sub(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{index}", str(index))
        if isinstance(value, list):
            return [sub(v) for v in value]
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        return value

    out = dict(entry)
    for key in ("argv", "inputs", "outputs", "env"):
        if key in out:
            out[key] = sub(out[key])
    return out


def _check_keys(entry: Mapping[str, Any], source: str, label: str) -> None:
    for key in entry:
        if key not in JOB_KEYS:
            if key in _RENAMED:
                hint = f'Write {_RENAMED[key]} = ... instead (a unit like "2G" or "10m" is allowed).'
            else:
                hint = f"Known keys: {', '.join(JOB_KEYS)}."
            where = f"{label}.{key}" if label else key
            raise ValidationError(
                f"{source}: {where}: unknown key {key!r}{_did_you_mean(key, JOB_KEYS)}.",
                hint=hint,
                field=where,
                file=source,
            )


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _in_job(exc: ValidationError, source: str, label: str, index: int | None) -> ValidationError:
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


# --- reading and uploading local files -------------------------------------------------------


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

    await bounded(concurrency, read, first_use.items())
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


async def bounded(limit: int, fn: Callable[[A], Awaitable[T]], items: Iterable[A]) -> list[T]:
    """``fn(item)`` for every item, at most ``limit`` at once; the first error cancels the rest."""
    sem = asyncio.Semaphore(limit)

    async def one(item: A) -> T:
        async with sem:
            return await fn(item)

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
