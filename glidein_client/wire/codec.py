"""JSON and TOML into wire structs, with plain-language errors that name the failing field."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from glidein_client.wire.errors import ValidationError

T = TypeVar("T")
_PATH_RE = re.compile(r"\$\.?")


def decode(data: bytes | str, type_: type[T], *, what: str = "request") -> T:
    """Decode JSON into ``type_``; a mismatch becomes a :class:`ValidationError` naming the field."""
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise _plain(exc, what) from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"The {what} is not valid JSON ({exc}).", hint="Send a JSON object.") from None


def convert(obj: Any, type_: type[T], *, what: str = "input") -> T:
    """Like :func:`decode` but from Python objects (e.g. parsed TOML)."""
    try:
        return msgspec.convert(obj, type=type_, strict=True)
    except msgspec.ValidationError as exc:
        raise _plain(exc, what) from None


def _plain(exc: msgspec.ValidationError, what: str) -> ValidationError:
    text = str(exc)
    field = None
    if " - at `" in text:
        text, _, path = text.partition(" - at `")
        field = _PATH_RE.sub("", path.rstrip("`"), count=1) or None
    text = text.replace("Object contains unknown field", "unknown field")
    where = f" at `{field}`" if field else ""
    return ValidationError(
        f"The {what} is invalid{where}: {text}.",
        hint="Fix that value and send it again; nothing from this request was accepted.",
        field=field,
    )


def encode(obj: Any) -> bytes:
    return msgspec.json.encode(obj)
