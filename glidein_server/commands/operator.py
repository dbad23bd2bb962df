"""``glidein-server operator totp-enrol``: operators' second factor."""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

from glidein_client.wire.codec import convert
from glidein_client.wire.schema import Name
from glidein_server import totp
from glidein_server.commands.common import emit, open_state_store, state_dir
from glidein_server.settings import ServerSettings, StateDir


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    op = sub.add_parser("operator", parents=[common], help="operators' second factor")
    osub = op.add_subparsers(dest="action", required=True)
    enrol = osub.add_parser(
        "totp-enrol",
        parents=[common],
        help="set up (or replace) an operator's TOTP and print its provisioning URI once",
    )
    enrol.add_argument("--subject", default="operator", help="the operator (default: operator)")
    enrol.set_defaults(handler=cmd_enrol)


async def cmd_enrol(args: argparse.Namespace) -> int:
    subject = args.subject
    convert(subject, Name, what="operator name")
    state = state_dir(args)
    settings = state.load()
    key = totp.load_or_create_key(state.root / settings.totp_key_file)
    async with open_state_store(state, settings) as store:
        secret, uri = await totp.enrol(store, key, subject, issuer=issuer(state, settings))
    emit(
        args.json,
        {"subject": subject, "totp_uri": uri},
        f"One-time codes for operator {subject!r}; add this to an authenticator app (shown only now; any older "
        "enrolment no longer works):",
        uri,
        f"  or enter the secret by hand: {secret}",
        "A running server uses it at once.",
    )
    return 0


def issuer(state: StateDir, settings: ServerSettings) -> str:
    """How authenticator apps name this server's codes."""
    return f"glidein {urlsplit(state.url(settings)).hostname or 'server'}"
