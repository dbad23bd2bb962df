"""The ids of the user's last ``glidein submit``: what ``wait`` and ``status`` without ids are about.

Kept per server in ``$XDG_STATE_HOME/glidein/last-submit.json`` (``~/.local/state/glidein/`` by
default), a file only its owner may read or write (0600, in a 0700 directory). Noting it is best
effort: a submit never fails because its ids could not be noted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from glidein_client.user import render
from glidein_client.user.args import parse_ids

log = logging.getLogger(__name__)
#: Servers remembered at once; the oldest is forgotten first.
MAX_SERVERS = 20


def state_file(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "glidein" / "last-submit.json"


def _read(path: Path) -> dict[str, str]:
    try:
        noted = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(noted, dict):
        return {}
    return {k: v for k, v in noted.items() if isinstance(k, str) and isinstance(v, str)}


def remember(url: str, ids: Sequence[int]) -> None:
    """Note ``ids`` as the last submit to ``url``."""
    path = state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        noted = _read(path)
        noted.pop(url, None)
        noted[url] = render.compress_ids(ids)
        kept = dict(list(noted.items())[-MAX_SERVERS:])
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(kept, fh)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("cannot note the last submit in %s: %s", path, exc)


def last(url: str) -> list[int]:
    """The ids of the last ``glidein submit`` to ``url`` from this account, or none."""
    ids = _read(state_file()).get(url)
    try:
        return parse_ids([ids]) if ids else []
    except ValueError:
        return []
