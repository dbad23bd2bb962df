"""``glidein-server user add|revoke|list|share``: analysers' tokens and their fair shares."""

from __future__ import annotations

import argparse

import msgspec

from glidein_client.wire.codec import convert
from glidein_client.wire.errors import ConfigError
from glidein_client.wire.schema import Name, Role
from glidein_server.commands.common import emit, state_dir
from glidein_server.commands.subjects import add_subject_commands


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    ssub = add_subject_commands(sub, common, Role.USER)
    share = ssub.add_parser(
        "share",
        parents=[common],
        help="set a user's fair share of the cores (kept in config.toml; default 1)",
        description="Between users the queue is shared by cores in use, in proportion to their shares; "
        "a job's priority orders only its owner's jobs. The server applies a change when it starts.",
    )
    share.add_argument("name")
    share.add_argument("share", help="a positive number, e.g. 2 for twice the default; 'default' to remove it")
    share.set_defaults(handler=cmd_share)


async def cmd_share(args: argparse.Namespace) -> int:
    name = convert(args.name, Name, what="user name")
    state = state_dir(args)
    settings = state.load()
    shares = dict(settings.shares)
    if args.share == "default":
        shares.pop(name, None)
    else:
        try:
            value = float(args.share)
        except ValueError:
            value = 0.0
        if not value > 0 or value == float("inf"):
            raise ConfigError(
                f"The share {args.share!r} is not a positive number.",
                hint="Give e.g. 2 (twice the default share of 1), 0.5, or 'default'.",
            )
        shares[name] = value
    state.write(msgspec.structs.replace(settings, shares=shares))
    now = shares.get(name, settings.default_share)
    emit(
        args.json,
        {"user": name, "share": now, "shares": shares, "default_share": settings.default_share},
        f"User {name!r} has share {now:g} (users not named: {settings.default_share:g}); "
        f"written to {state.config_path}. A running server applies it when restarted.",
    )
    return 0
