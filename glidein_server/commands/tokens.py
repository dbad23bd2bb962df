"""``glidein-server token add|list|revoke``: any role's tokens, by id."""

from __future__ import annotations

import argparse
import json
import time

from glidein_client.wire.errors import NotFoundError
from glidein_client.wire.schema import Role
from glidein_server.commands.common import emit, open_state_store, state_dir
from glidein_server.commands.subjects import mint_for, token_table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    tok = sub.add_parser("token", parents=[common], help="mint, list and revoke tokens")
    tsub = tok.add_subparsers(dest="action", required=True)
    tadd = tsub.add_parser("add", parents=[common], help="mint a token and print it once")
    tadd.add_argument("--role", required=True, choices=[r.value for r in Role if r is not Role.PILOT])
    tadd.add_argument("--subject", required=True, help="user, site or operator name")
    tadd.add_argument("--scopes", help="comma-separated: read, write, admin, metrics (default: all the role may use)")
    tadd.add_argument("--expires-in", help="the token expires after this long (e.g. 12h; default: never)")
    tadd.add_argument("--save", metavar="FILE", help="write the token to FILE (mode 0600) instead of printing it")
    tadd.set_defaults(handler=cmd_add)
    tlist = tsub.add_parser("list", parents=[common], help="list tokens (never the tokens themselves)")
    tlist.add_argument("--role", choices=[r.value for r in Role])
    tlist.add_argument("--subject")
    tlist.add_argument("--revoked", action="store_true", help="include revoked tokens")
    tlist.set_defaults(handler=cmd_list)
    trev = tsub.add_parser("revoke", parents=[common], help="revoke a token by its id (see `token list`)")
    trev.add_argument("token_id")
    trev.set_defaults(handler=cmd_revoke)


async def cmd_add(args: argparse.Namespace) -> int:
    return await mint_for(args, Role(args.role), args.subject, args.scopes, another=True)


async def cmd_revoke(args: argparse.Namespace) -> int:
    async with open_state_store(state_dir(args)) as store:
        ids = await store.revoke_token(args.token_id, time.time())
    if not ids:
        raise NotFoundError(
            f"No active token has the id {args.token_id!r}.", hint="`glidein-server token list` shows them."
        )
    emit(
        args.json,
        {"revoked": len(ids)},
        f"Revoked token {args.token_id}; a running server stops accepting it within 2 s.",
    )
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    async with open_state_store(state_dir(args)) as store:
        tokens = await store.list_tokens(Role(args.role) if args.role else None, args.subject, revoked=args.revoked)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": t.id,
                        "role": t.role.value,
                        "subject": t.subject,
                        "scopes": [s.value for s in t.scopes],
                        "created_at": t.created_at,
                        "expires_at": t.expires_at,
                        "revoked_at": t.revoked_at,
                    }
                    for t in tokens
                ]
            )
        )
        return 0
    print("\n".join(token_table(tokens, time.time())))
    return 0
