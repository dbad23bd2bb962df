"""The site config a deployment writes on the login node, and the small TOML writer behind it."""

from __future__ import annotations

import re
import sys
from typing import Any

from glidein_client.site.config import SiteConfig
from glidein_client.wire.errors import GlideinError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def remote_config_text(site: SiteConfig, token_file: str, *, ca_file: str | None = None) -> str:
    """The site config for the login node: no ``[ssh]``, ``site.token_file`` at the copied token,
    ``site.ca_file`` at the copied CA (when there is one)."""
    with open(site.path, "rb") as fh:
        raw = tomllib.load(fh)
    raw.pop("ssh", None)
    raw["site"]["token_file"] = token_file
    if ca_file is not None:
        raw["site"]["ca_file"] = ca_file
    text = (
        f"# Written by `glidein-client deploy` from {site.path.replace(chr(10), ' ')} on the operator's host.\n"
        "# Change that file and deploy again: the next deploy replaces this one.\n\n" + _toml(raw)
    )
    if tomllib.loads(text) != raw:  # pragma: no cover - a bug in _toml
        raise GlideinError("The site config could not be written back as TOML faithfully.")
    return text


def _toml(table: dict[str, Any], prefix: str = "") -> str:
    """A TOML document for ``table`` (strings, numbers, booleans, lists and tables)."""
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict)]
    tables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    out = "".join(f"{_key(k)} = {_value(v)}\n" for k, v in scalars)
    for key, sub in tables:
        name = f"{prefix}.{_key(key)}" if prefix else _key(key)
        out += f"\n[{name}]\n" + _toml(sub, name)
    return out.lstrip("\n") if not prefix else out


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, repr(value))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    return value.isoformat() if hasattr(value, "isoformat") else _string(str(value))


def _string(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
