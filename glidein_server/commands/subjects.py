"""Users and sites share their token commands: ``add``, ``revoke``, ``list`` (and ``token``'s table)."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glidein_client.wire.codec import convert
from glidein_client.wire.errors import ConfigError, NotFoundError
from glidein_client.wire.schema import Name, Role, TokenInfo
from glidein_client.wire.units import format_duration
from glidein_server.commands.common import (
    emit,
    expires_at,
    format_when,
    open_state_store,
    scopes_of,
    state_dir,
)
from glidein_server.http.admin import mint


def add_subject_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser, role: Role
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """``NOUN add|revoke|list``; returns the noun's subparsers so a module can add more actions."""
    noun = role.value
    sp = sub.add_parser(noun, parents=[common], help=f"manage {noun}s")
    ssub = sp.add_subparsers(dest="action", required=True)
    add = ssub.add_parser("add", parents=[common], help=f"add a {noun} and print its token once")
    add.add_argument("name")
    add.add_argument("--expires-in", help="the token expires after this long (e.g. 90d; default: never)")
    add.add_argument(
        "--another", action="store_true", help=f"mint another token for a {noun} that already has an active one"
    )
    add.add_argument(
        "--save",
        metavar="FILE",
        help="write the token to FILE (mode 0600, its directory made 0700) instead of printing it",
    )
    add.set_defaults(handler=cmd_add, role=role)
    rev = ssub.add_parser(
        "revoke",
        parents=[common],
        help=f"revoke every token of a {noun}" + (" and of its pilots" if role is Role.SITE else ""),
    )
    rev.add_argument("name")
    rev.set_defaults(handler=cmd_revoke, role=role)
    lst = ssub.add_parser("list", parents=[common], help=f"list {noun}s with active tokens")
    lst.add_argument("--revoked", action="store_true", help="include those whose tokens are all revoked or expired")
    lst.set_defaults(handler=cmd_list, role=role)
    return ssub


async def mint_for(args: argparse.Namespace, role: Role, name: str, scopes: str | None, *, another: bool) -> int:
    """Mint a token and print it once; a second active token for one subject only when asked."""
    convert(name, Name, what=f"{role.value} name")
    save = _free_path(args.save) if getattr(args, "save", None) else None
    state = state_dir(args)
    async with open_state_store(state) as store:
        active = [t for t in await store.list_tokens(role, name, revoked=False) if _active(t, time.time())]
        if active and not another:
            raise ConfigError(
                f"The {role.value} {name!r} already has an active token ({', '.join(t.id for t in active)}).",
                hint=f"Use that one; or add --another for a second token; or replace it: "
                f"`glidein-server {role.value} revoke {name}`, then add it again.",
            )
        grant = await mint(store, role, name, expires_at=expires_at(args.expires_in), scopes=scopes_of(role, scopes))
    until = f", valid until {format_when(grant.expires_at)}" if grant.expires_at else ""
    if save:
        path = save_secret(save, grant.token)
        emit(
            args.json,
            {role.value: name, "token_file": str(path), "id": grant.id, "expires_at": grant.expires_at},
            f"Token {grant.id} for {role.value} {name!r}{until} saved in {path} (mode 0600).",
        )
        return 0
    emit(
        args.json,
        {role.value: name, "token": grant.token, "id": grant.id, "expires_at": grant.expires_at},
        f"Token {grant.id} for {role.value} {name!r}{until} (shown only now; store it in a file with mode 0600):",
        grant.token,
    )
    return 0


def _free_path(name: str) -> str:
    """``--save``'s file, which must not exist yet (checked before a token is made)."""
    path = os.path.expanduser(name)
    if os.path.lexists(path):
        raise ConfigError(
            f"{path} already exists; no token was made.", hint="Remove it first, or name another file with --save."
        )
    return path


def save_secret(name: str, secret: str) -> Path:
    """Write ``secret`` to a new 0600 file (its directory made 0700 if new); an existing file is kept."""
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"{path} already exists; the new token was not written there.",
            hint="Remove it first, or name another file with --save.",
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot write {path}: {exc.strerror}.") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return path


async def cmd_add(args: argparse.Namespace) -> int:
    return await mint_for(args, args.role, args.name, None, another=args.another)


async def cmd_revoke(args: argparse.Namespace) -> int:
    role: Role = args.role
    async with open_state_store(state_dir(args)) as store:
        ids = await store.revoke_subject(role, args.name, time.time())
        known = sorted({t.subject for t in await store.list_tokens(role, None, revoked=False)})
    if not ids:
        hint = f"Known {role.value}s: {', '.join(known)}." if known else f"There are no {role.value}s yet."
        raise NotFoundError(f"No {role.value} {args.name!r} has an active token; nothing was revoked.", hint=hint)
    emit(
        args.json,
        {"revoked": len(ids)},
        f"Revoked {len(ids)} token(s) of {role.value} {args.name!r}"
        + (" and its pilots" if role is Role.SITE else "")
        + "; a running server stops accepting them within 2 s.",
    )
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    role: Role = args.role
    async with open_state_store(state_dir(args)) as store:
        tokens = await store.list_tokens(role, None, revoked=True)
    now = time.time()
    rows: dict[str, list[TokenInfo]] = {}
    for t in tokens:
        rows.setdefault(t.subject, []).append(t)
    out: list[dict[str, Any]] = []
    for name in sorted(rows):
        active = [t for t in rows[name] if _active(t, now)]
        if not active and not args.revoked:
            continue
        expiring = [t.expires_at for t in active if t.expires_at]
        out.append(
            {
                "name": name,
                "active_tokens": len(active),
                "first_created_at": min(t.created_at for t in rows[name]),
                "next_expiry_at": min(expiring) if expiring else None,
            }
        )
    if args.json:
        emit(True, out)
        return 0
    if not out:
        print(f"No {role.value}s with active tokens." + ("" if args.revoked else " (--revoked lists the others)"))
        return 0
    print(f"{role.value.upper():<20} {'TOKENS':>6}  {'CREATED':<16}  NEXT EXPIRY")
    for row in out:
        print(
            f"{row['name']:<20} {row['active_tokens']:>6}  {format_when(row['first_created_at']):<16}  "
            f"{format_when(row['next_expiry_at'], 'never')}"
        )
    return 0


def _active(t: TokenInfo, now: float) -> bool:
    return not t.revoked_at and not (t.expires_at and t.expires_at < now)


def token_table(tokens: Sequence[TokenInfo], now: float) -> list[str]:
    lines = [f"{'ID':<17} {'ROLE':<9} {'SUBJECT':<20} {'SCOPES':<25} {'CREATED':<16}  {'EXPIRES':<16}  STATE"]
    for t in tokens:
        state = (
            "revoked"
            if t.revoked_at
            else "expired"
            if t.expires_at and t.expires_at < now
            else f"expires in {format_duration(t.expires_at - now)}"
            if t.expires_at
            else "active"
        )
        lines.append(
            f"{t.id:<17} {t.role.value:<9} {t.subject:<20} {','.join(s.value for s in t.scopes):<25} "
            f"{format_when(t.created_at):<16}  {format_when(t.expires_at, 'never'):<16}  {state}"
        )
    return lines
