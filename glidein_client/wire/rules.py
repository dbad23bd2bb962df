"""Cross-field rules of a job that msgspec's types and bounds cannot express."""

from __future__ import annotations

import posixpath

from glidein_client.wire.errors import ValidationError
from glidein_client.wire.schema import JobSpec


def check_relative_path(name: str, *, field: str) -> str:
    """A sandbox-relative path: no absolute paths, no ``..``, no empty parts."""
    if not name or "\x00" in name:
        raise ValidationError(f"{field}: the file name is empty.", hint="Give a relative path.", field=field)
    norm = posixpath.normpath(name)
    if name.startswith("/") or norm.startswith("..") or "/../" in f"/{name}/" or norm in (".", ""):
        raise ValidationError(
            f"{field}: {name!r} points outside the job's sandbox.",
            hint="Use a relative path inside the job's directory, without '..' and not starting with '/'.",
            field=field,
        )
    return norm


def check_job(spec: JobSpec, index: int | None = None, *, texts: bool = True) -> JobSpec:
    """Rules beyond types and bounds. Raises :class:`ValidationError` naming the field.

    ``texts=False`` leaves out the search for NUL characters, for a caller that knows there is none
    (the server, when a submit's JSON holds no ``\\u0000``)."""
    if spec.argv and spec.script is None and not (spec.inputs or spec.outputs or spec.env or texts):
        return spec  # a bulk submit's usual job: a command, nothing else to check
    at = f"jobs[{index}]." if index is not None else ""
    if bool(spec.argv) == bool(spec.script):
        raise ValidationError(
            f"{at}argv/script: a job needs exactly one of a command (argv) or a script.",
            hint="Give the command after '--' on the command line, or a script file.",
            field=f"{at}argv",
        )
    seen: set[str] = set()
    for i, inp in enumerate(spec.inputs):
        f = f"{at}inputs[{i}]"
        name = check_relative_path(inp.name, field=f"{f}.name")
        if (inp.url is None) == (inp.sha256 is None):
            raise ValidationError(
                f"{f}: an input needs either an uploaded file (sha256) or a url, not both or neither.",
                hint="Let `glidein submit -i FILE` upload it, or give an http(s) URL.",
                field=f,
            )
        if inp.url is not None and not inp.url.startswith(("http://", "https://")):
            raise ValidationError(f"{f}.url: only http(s) URLs are supported.", field=f"{f}.url")
        if name in seen:
            raise ValidationError(f"{f}.name: {name!r} is given twice.", field=f"{f}.name")
        seen.add(name)
    for i, out in enumerate(spec.outputs):
        check_relative_path(out, field=f"{at}outputs[{i}]")
    for key in spec.env:
        if not key or "=" in key or "\x00" in key:
            raise ValidationError(f"{at}env: {key!r} is not a valid variable name.", field=f"{at}env")
    nul = _nul_field(spec) if texts else None
    if nul is not None:
        raise ValidationError(
            f"{at}{nul}: the text holds a NUL character (\\0), which a command, its environment and a "
            "job's labels cannot carry.",
            hint="Remove it; nothing from this request was accepted.",
            field=f"{at}{nul}",
        )
    return spec


def _nul_field(spec: JobSpec) -> str | None:
    """The first field whose text holds a NUL character (no exec passes it, PostgreSQL keeps none)."""
    for i, arg in enumerate(spec.argv or ()):
        if "\x00" in arg:
            return f"argv[{i}]"
    if spec.script is not None and "\x00" in spec.script:
        return "script"
    for key, value in spec.env.items():
        if "\x00" in value:
            return f"env.{key}"
    for key, value in spec.labels.items():
        if "\x00" in key or "\x00" in value:
            return "labels"
    return None
