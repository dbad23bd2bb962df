"""What the ``glidein-server`` subcommands share: the state directory, the store, output helpers."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from glidein_client.wire.errors import ConfigError, GlideinError
from glidein_client.wire.schema import ROLE_SCOPES, Role, Scope
from glidein_client.wire.units import parse_duration_s
from glidein_server.server import open_store
from glidein_server.settings import ServerSettings, StateDir
from glidein_server.store.base import Store

ENV_DIR = "GLIDEIN_SERVER_DIR"
DEFAULT_DIR = "glidein-server"

#: argparse's type for ``_SubParsersAction``, spelled once.


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes, before or after its name (``--dir``, ``--json``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    common.add_argument(
        "--dir", default=argparse.SUPPRESS, help=f"state directory (default: ${ENV_DIR} or ./{DEFAULT_DIR})"
    )
    return common


def state_dir(args: argparse.Namespace) -> StateDir:
    return StateDir(args.dir)


@asynccontextmanager
async def open_state_store(state: StateDir, settings: ServerSettings | None = None) -> AsyncIterator[Store]:
    store = open_store(state, settings or state.load())
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def emit(as_json: bool, obj: object, *lines: str) -> None:
    print(json.dumps(obj) if as_json else "\n".join(lines))


def expires_at(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return time.time() + parse_duration_s(text, field="--expires-in")
    except GlideinError as exc:
        raise ConfigError(exc.message, hint="Give a duration such as 12h, 90d or 3600.") from None


def scopes_of(role: Role, text: str | None) -> list[Scope] | None:
    if not text:
        return None
    allowed = ROLE_SCOPES[role]
    out: list[Scope] = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        if word not in {s.value for s in allowed}:
            raise ConfigError(
                f"--scopes: {word!r} is not a scope a {role.value} token can have.",
                hint=f"Choose from: {', '.join(s.value for s in allowed)}.",
            )
        out.append(Scope(word))
    return out or None


def format_when(ts: float | None, never: str = "-") -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else never


def default_dir() -> str:
    return os.environ.get(ENV_DIR, DEFAULT_DIR)
