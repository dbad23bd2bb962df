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
    A whole number from -2147483648 to 2147483647; higher runs first (default 0).
``max_retries``
    How often a job that failed by its own fault is run again (default 0). A job killed for its
    memory or walltime is retried with a bigger request regardless (twice, by default).
``count``
    Submit the job this many times; ``{index}`` in ``argv``, ``inputs``, ``outputs`` and
    ``env`` values becomes 0, 1, ..., count-1.

Relative paths (inputs, scripts) are read relative to the job file's directory. Any other key
is an error naming the file, the job and the key (``job[0]`` is the first ``[[job]]``); every
problem of the file is reported at once (:mod:`.problems`), and nothing is uploaded or submitted
until every job in the file is valid and every local file is readable. The drafts this module
makes are checked, read and uploaded by :mod:`.drafts`.
"""

from __future__ import annotations

import difflib
import posixpath
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from glidein_client.user.drafts import (
    JobDraft,
    LocalFiles,
    LocalInput,
    check_all,
    in_job,
    read_local_files,
    upload_files,
)
from glidein_client.user.problems import raise_all
from glidein_client.user.tasks import bounded
from glidein_client.wire.errors import ValidationError
from glidein_client.wire.schema import InputFile, JobSpec
from glidein_client.wire.units import parse_duration_s, parse_memory_mb

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "JobDraft",
    "LocalFiles",
    "bounded",
    "build_drafts",
    "check_all",
    "load_jobfile",
    "parse_jobfile",
    "read_local_files",
    "upload_files",
]

JOB_KEYS = (
    "argv", "script", "inputs", "outputs", "cpus", "gpus", "memory", "disk", "walltime",
    "env", "labels", "sites", "priority", "max_retries", "count",
)  # fmt: skip
_RENAMED = {"memory_mb": "memory", "disk_mb": "disk", "walltime_s": "walltime"}
_MERGED = ("env", "labels")
_UNITS = {"memory": ("memory_mb", parse_memory_mb), "disk": ("disk_mb", parse_memory_mb),
          "walltime": ("walltime_s", parse_duration_s)}  # fmt: skip
MAX_COUNT = 1_000_000


def load_jobfile(path: str | Path) -> list[JobDraft]:
    """Read a job file and return one checked draft per job (``count`` expanded); every problem at once."""
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
    drafts, errors = _parse(raw, source=str(path), base_dir=path.resolve().parent)
    try:
        check_all(drafts)
    except ValidationError as exc:
        errors += _each(exc)
    raise_all(errors, str(path))
    return drafts


def parse_jobfile(raw: Mapping[str, Any], *, source: str, base_dir: Path) -> list[JobDraft]:
    """Turn a parsed job file into drafts; pure: no file is read. Every problem at once."""
    drafts, errors = _parse(raw, source=source, base_dir=base_dir)
    raise_all(errors, source)
    return drafts


def build_drafts(
    entry: Mapping[str, Any], *, base_dir: Path, source: str = "command line", label: str = ""
) -> list[JobDraft]:
    """One job entry (job-file keys) to drafts, one per ``count``. Pure: reads no file."""
    drafts, errors = _build(entry, base_dir, source, label)
    raise_all(errors, source)
    return drafts


def _each(exc: ValidationError) -> list[ValidationError]:
    """The single problems an error from :func:`check_all` stands for."""
    listed = exc.fields.get("errors")
    if not listed:
        return [exc]
    return [ValidationError(e["error"], hint=e.get("hint"), field=e.get("field"), file=exc.fields.get("file"))
            for e in listed]  # fmt: skip


def _parse(raw: Mapping[str, Any], *, source: str, base_dir: Path) -> tuple[list[JobDraft], list[ValidationError]]:
    errors = [
        ValidationError(
            f"{source}: unknown key {key!r}{_did_you_mean(key, ('defaults', 'job'))}.",
            hint="A job file has an optional [defaults] table and one [[job]] table per job.",
            field=key,
        )
        for key in raw
        if key not in ("defaults", "job")
    ]
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        errors.append(ValidationError(f"{source}: defaults must be a table ([defaults]).", field="defaults"))
        defaults = {}
    errors += _check_keys(defaults, source, "defaults")
    defaults = {k: v for k, v in defaults.items() if k in JOB_KEYS}
    jobs = raw.get("job", [])
    if not isinstance(jobs, list) or not all(isinstance(j, dict) for j in jobs):
        errors.append(
            ValidationError(f"{source}: job must be a list of tables, written [[job]].", field="job", file=source)
        )
        return [], errors
    if not jobs:
        errors.append(
            ValidationError(
                f"{source}: the file has no jobs.", hint="Add at least one [[job]] table.", field="job", file=source
            )
        )
    drafts: list[JobDraft] = []
    for i, entry in enumerate(jobs):
        merged = {**defaults, **entry}
        for key in _MERGED:
            if isinstance(defaults.get(key), dict) and isinstance(entry.get(key), dict):
                merged[key] = {**defaults[key], **entry[key]}
        built, problems = _build(merged, base_dir, source, f"job[{i}]")
        drafts += built
        errors += problems
    return drafts, errors


def _build(
    entry: Mapping[str, Any], base_dir: Path, source: str, label: str
) -> tuple[list[JobDraft], list[ValidationError]]:
    errors = _check_keys(entry, source, label)
    entry = {k: v for k, v in entry.items() if k in JOB_KEYS}
    if "count" not in entry:
        draft, problems = _build_one(entry, base_dir, source, label, None)
        return ([draft] if draft else []), errors + problems
    count = entry["count"]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        problem = ValidationError(f"count: must be a whole number from 1 to {MAX_COUNT}, got {count!r}.", field="count")
        return [], [*errors, in_job(problem, source, label, None)]
    drafts = []
    for i in range(count):
        draft, problems = _build_one(_substitute(entry, i), base_dir, source, label, i)
        if problems:  # the copies differ only in their index: the first copy's problems stand for all
            return [], errors + problems
        assert draft is not None
        drafts.append(draft)
    return drafts, errors


def _build_one(
    entry: Mapping[str, Any], base_dir: Path, source: str, label: str, index: int | None
) -> tuple[JobDraft | None, list[ValidationError]]:
    """The draft of one job, or every problem of its keys (each key converted on its own)."""
    errors: list[ValidationError] = []
    data: dict[str, Any] = {}
    for key, value in entry.items():
        if key in ("count", "inputs", "script"):
            continue
        try:
            name, parsed = (_UNITS[key][0], _amount(value, key, _UNITS[key][1])) if key in _UNITS else (key, value)
            _convert_spec({name: parsed})
            data[name] = parsed
        except ValidationError as exc:
            errors.append(exc)
    inputs: list[InputFile] = []
    local: list[LocalInput] = []
    script_path = None
    try:
        inputs, local = _inputs(entry.get("inputs", []), base_dir)
    except ValidationError as exc:
        errors.append(exc)
    if "script" in entry:
        if not isinstance(entry["script"], str) or not entry["script"]:
            errors.append(
                ValidationError(f"script: must be the path of a script file, got {entry['script']!r}.", field="script")
            )
        else:
            try:
                script_path = _local_path(entry["script"], base_dir, "script")
            except ValidationError as exc:
                errors.append(exc)
    try:
        spec = None if errors else _convert_spec(data)
    except ValidationError as exc:
        errors.append(exc)
    if spec is None or errors:
        return None, [in_job(exc, source, label, index) for exc in errors]
    draft = JobDraft(
        spec=msgspec.structs.replace(spec, inputs=inputs),
        local_inputs=tuple(local),
        script_path=script_path,
        source=source,
        label=label,
        index=index,
    )
    return draft, []


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
            resolved = _local_path(path, base_dir, where)
            local.append(LocalInput(index=len(inputs), path=resolved))
            inputs.append(InputFile(name=name or resolved.name))
    return inputs, local


def _local_path(text: str, base_dir: Path, where: str) -> Path:
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~name of a user this machine does not know (or no home directory at all)
        raise ValidationError(
            f"{where}: cannot tell whose home directory {text.split('/', 1)[0]!r} means in {text!r}.",
            hint="Write the path in full, or relative to the job file's directory.",
            field=where,
        ) from None
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


def _check_keys(entry: Mapping[str, Any], source: str, label: str) -> list[ValidationError]:
    errors = []
    for key in entry:
        if key not in JOB_KEYS:
            if key in _RENAMED:
                hint = f'Write {_RENAMED[key]} = ... instead (a unit like "2G" or "10m" is allowed).'
            else:
                hint = f"Known keys: {', '.join(JOB_KEYS)}."
            where = f"{label}.{key}" if label else key
            errors.append(
                ValidationError(
                    f"{source}: {where}: unknown key {key!r}{_did_you_mean(key, JOB_KEYS)}.",
                    hint=hint,
                    field=where,
                    file=source,
                )
            )
    return errors


def _did_you_mean(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
