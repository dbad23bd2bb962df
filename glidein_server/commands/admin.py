"""``glidein-server admin ...``: the operator actions of ``/api/v1/admin`` from any host.

Each action needs an operator token (``--token-file``) and a fresh one-time code of the
operator's authenticator app (``--totp CODE``, ``--totp -`` to read it from stdin, or asked for
on the terminal); each code is accepted once. ``admin summary`` needs only the token.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import msgspec

from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import AuthError, ConfigError, GlideinError, NotFoundError
from glidein_client.wire.schema import Role, SiteMode, SiteView, Summary, TokenRequest
from glidein_client.wire.secrets import read_secret_file
from glidein_server.commands.common import emit, expires_at, format_when, scopes_of
from glidein_server.commands.site_control import parse_cap
from glidein_server.commands.subjects import save_secret, token_table
from glidein_server.policy.site_control import describe

Sub: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

ENV_URL = "GLIDEIN_URL"
ENV_TOKEN_FILE = "GLIDEIN_OPERATOR_TOKEN_FILE"
ENV_CA_FILE = "GLIDEIN_CA_FILE"
_MODES = {
    "drain": (SiteMode.DRAINING, "stop its pilots claiming and let running jobs finish; then its pilots leave"),
    "pause": (SiteMode.PAUSED, "no new pilots and no new claims until resumed"),
    "resume": (SiteMode.OPEN, "open it again: pilots and claims as the demand says"),
}


def register(sub: Sub, common: argparse.ArgumentParser) -> None:
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--url", "--server-url", dest="url", default=argparse.SUPPRESS, help=f"the server ({ENV_URL})")
    remote.add_argument(
        "--token-file", default=argparse.SUPPRESS, help=f"file holding an operator token ({ENV_TOKEN_FILE})"
    )
    remote.add_argument(
        "--ca-file", default=argparse.SUPPRESS, help=f"CA file that signed the server's certificate ({ENV_CA_FILE})"
    )
    remote.add_argument(
        "--totp",
        metavar="CODE",
        default=argparse.SUPPRESS,
        help="the one-time code of your authenticator app; '-' reads it from stdin (default: asked for)",
    )
    remote.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    parents = [remote]  # not --dir: these actions go through the server, not its state directory
    adm = sub.add_parser(
        "admin",
        parents=parents,
        help="operator actions on a running server, from any host (operator token and one-time code)",
        description="Add and revoke users, sites and tokens; drain, pause, resume and cap sites; show the summary. "
        "Each action but summary takes a fresh one-time code (TOTP) of the operator's authenticator app.",
    )
    asub = adm.add_subparsers(dest="noun", required=True)
    nouns: dict[Role, Sub] = {}
    for role in (Role.USER, Role.SITE):
        noun = role.value
        what = "add, revoke, drain, pause, resume or cap sites" if role is Role.SITE else "add or revoke users"
        ssub = asub.add_parser(noun, parents=parents, help=what).add_subparsers(dest="action", required=True)
        nouns[role] = ssub
        add = ssub.add_parser("add", parents=parents, help=f"add a {noun} and print its token once")
        add.add_argument("name")
        add.add_argument("--expires-in", help="the token expires after this long (e.g. 90d; default: never)")
        add.add_argument("--another", action="store_true", help=f"another token for a {noun} that has one")
        add.add_argument("--save", metavar="FILE", help="write the token to FILE (mode 0600) instead of printing it")
        add.set_defaults(handler=cmd_add, role=role)
        rev = ssub.add_parser("revoke", parents=parents, help=f"revoke every token of a {noun}")
        rev.add_argument("name")
        rev.set_defaults(handler=cmd_revoke, role=role)
    _register_site_control(nouns[Role.SITE], parents)
    _register_tokens(asub, parents)
    summary = asub.add_parser("summary", parents=parents, help="jobs, pilots and sites (no one-time code needed)")
    summary.set_defaults(handler=cmd_summary)


def _register_site_control(ssub: Sub, parents: list[argparse.ArgumentParser]) -> None:
    for action, (mode, text) in _MODES.items():
        p = ssub.add_parser(action, parents=parents, help=text)
        p.add_argument("name")
        p.set_defaults(handler=cmd_mode, mode=mode)
    cap = ssub.add_parser("cap", parents=parents, help="let the site's jobs hold at most N cores at once")
    cap.add_argument("name")
    cap.add_argument("cores", help="the most cores at once, or 'none' to lift the cap")
    cap.set_defaults(handler=cmd_cap)


def _register_tokens(asub: Sub, parents: list[argparse.ArgumentParser]) -> None:
    tsub = asub.add_parser("token", parents=parents, help="mint, list and revoke tokens").add_subparsers(
        dest="action", required=True
    )
    add = tsub.add_parser("add", parents=parents, help="mint a token and print it once")
    add.add_argument("--role", required=True, choices=[r.value for r in Role if r is not Role.PILOT])
    add.add_argument("--subject", required=True, help="user, site or operator name")
    add.add_argument("--scopes", help="comma-separated: read, write, admin, metrics (default: all the role may use)")
    add.add_argument("--expires-in", help="the token expires after this long (e.g. 12h; default: never)")
    add.add_argument("--save", metavar="FILE", help="write the token to FILE (mode 0600) instead of printing it")
    add.set_defaults(handler=cmd_token_add)
    lst = tsub.add_parser("list", parents=parents, help="list tokens (never the tokens themselves)")
    lst.add_argument("--role", choices=[r.value for r in Role])
    lst.add_argument("--subject")
    lst.add_argument("--revoked", action="store_true", help="include revoked tokens")
    lst.set_defaults(handler=cmd_token_list)
    rev = tsub.add_parser("revoke", parents=parents, help="revoke a token by its id (see `admin token list`)")
    rev.add_argument("token_id")
    rev.set_defaults(handler=cmd_token_revoke)


# --- connection, code and output -------------------------------------------------------------


def _client(args: argparse.Namespace) -> ApiClient:
    url = getattr(args, "url", None) or os.environ.get(ENV_URL)
    if not url:
        raise ConfigError(
            "Which server? No --url given and GLIDEIN_URL is not set.",
            hint="Pass --url https://SERVER:PORT (the URL `glidein-server init` printed).",
        )
    token_file = getattr(args, "token_file", None) or os.environ.get(ENV_TOKEN_FILE)
    if not token_file:
        raise ConfigError(
            f"No operator token: pass --token-file FILE or set {ENV_TOKEN_FILE}.",
            hint="`glidein-server init` printed the first operator token; put it in a file only you can read "
            "(chmod 600). On the server host, `glidein-server token add --role operator --subject NAME` mints more.",
        )
    fix = "On the server host, `glidein-server token add --role operator --subject NAME --save FILE` mints one."
    token = read_secret_file(token_file, what="operator token", fix=fix)
    ca = getattr(args, "ca_file", None) or os.environ.get(ENV_CA_FILE) or None
    return ApiClient(url.rstrip("/"), token, ca_file=ca, timeout_s=30.0)


def one_time_code(args: argparse.Namespace) -> str:
    """The code from ``--totp``, stdin (``--totp -``) or the terminal; six digits."""
    code = getattr(args, "totp", None)
    if code == "-":
        code = sys.stdin.readline()
    elif code is None:
        if not sys.stdin.isatty():
            raise ConfigError(
                "This action needs a one-time code (TOTP) and there is no terminal to ask for it.",
                hint="Pass --totp CODE, or --totp - to read it from stdin.",
            )
        code = getpass.getpass("One-time code from your authenticator app: ")
    code = code.strip().replace(" ", "")
    if not (code.isdigit() and len(code) == 6):
        raise ConfigError(
            f"{code!r} is not a one-time code.", hint="Give the 6 digits your authenticator app shows now."
        )
    return code


async def _call(
    args: argparse.Namespace, action: Callable[[ApiClient, str], Awaitable[Any]], *, code: bool = True
) -> Any:
    """Run one API call with a fresh code; the server's answers to a bad code speak of this command."""
    api = _client(args)
    totp = one_time_code(args) if code else ""
    try:
        async with api:
            return await action(api, totp)
    except AuthError as exc:
        if "one-time code" in exc.message and exc.hint and "header" in exc.hint:
            raise AuthError(exc.message, hint="Give the code your authenticator app shows now (--totp CODE).") from None
        raise
    except GlideinError as exc:
        if exc.hint and "another: true" in exc.hint:
            hint = "Use that one, add --another for a second token, or revoke it first."
            raise type(exc)(exc.message, hint=hint) from None
        raise


def _expires_in_s(text: str | None) -> int | None:
    if not text:
        return None
    at = expires_at(text)
    return max(1, round(at - time.time())) if at else None


def _grant(args: argparse.Namespace, grant: Any, what: str) -> int:
    until = f", valid until {format_when(grant.expires_at)}" if grant.expires_at else ""
    if args.save:
        path = save_secret(args.save, grant.token)
        emit(
            args.json,
            {"id": grant.id, "token_file": str(path), "expires_at": grant.expires_at},
            f"Token {grant.id} for {what}{until} saved in {path} (mode 0600).",
        )
        return 0
    emit(
        args.json,
        msgspec.to_builtins(grant),
        f"Token {grant.id} for {what}{until} (shown only now; store it in a file with mode 0600):",
        grant.token,
    )
    return 0


def _site_lines(site: SiteView, head: str) -> list[str]:
    return [
        head,
        f"site {site.name}: {describe(site.mode, site.max_cpus)}",
        f"  {site.cpus_in_use} cores in use; pilots: {site.pilots_running} running, {site.pilots_pending} pending",
    ]


# --- the actions -----------------------------------------------------------------------------


async def cmd_add(args: argparse.Namespace) -> int:
    role: Role = args.role
    _check_save(args.save)
    seconds = _expires_in_s(args.expires_in)
    grant = await _call(
        args, lambda api, c: api.admin_add(role, args.name, c, expires_in_s=seconds, another=args.another)
    )
    return _grant(args, grant, f"{role.value} {args.name!r}")


async def cmd_revoke(args: argparse.Namespace) -> int:
    role: Role = args.role
    n = await _call(args, lambda api, c: api.admin_revoke(role, args.name, c))
    if not n:
        raise NotFoundError(
            f"No {role.value} {args.name!r} has an active token; nothing was revoked.",
            hint=f"`glidein-server admin token list --role {role.value}` lists them.",
        )
    also = " and its pilots" if role is Role.SITE else ""
    emit(args.json, {"revoked": n}, f"Revoked {n} token(s) of {role.value} {args.name!r}{also}; at once.")
    return 0


async def cmd_mode(args: argparse.Namespace) -> int:
    mode: SiteMode = args.mode
    site = await _call(args, lambda api, c: api.admin_site_mode(args.name, mode, c))
    emit(args.json, msgspec.to_builtins(site), *_site_lines(site, f"site {args.name}: {mode.value}."))
    return 0


async def cmd_cap(args: argparse.Namespace) -> int:
    cores = parse_cap(args.cores, f"glidein-server admin site cap {args.name} 64")
    site = await _call(args, lambda api, c: api.admin_site_cap(args.name, cores, c))
    head = f"site {args.name}: " + (f"capped at {cores} cores." if cores else "no cap.")
    emit(args.json, msgspec.to_builtins(site), *_site_lines(site, head))
    return 0


async def cmd_token_add(args: argparse.Namespace) -> int:
    role = Role(args.role)
    _check_save(args.save)
    req = TokenRequest(
        role=role,
        subject=args.subject,
        scopes=scopes_of(role, args.scopes),
        expires_in_s=_expires_in_s(args.expires_in),
    )
    grant = await _call(args, lambda api, c: api.admin_mint(req, c))
    return _grant(args, grant, f"{role.value} {args.subject!r}")


async def cmd_token_list(args: argparse.Namespace) -> int:
    role = Role(args.role) if args.role else None
    listed = await _call(
        args, lambda api, c: api.admin_tokens(c, role=role, subject=args.subject, revoked=args.revoked)
    )
    if args.json:
        emit(True, msgspec.to_builtins(listed.tokens))
    else:
        print("\n".join(token_table(listed.tokens, time.time())))
    return 0


async def cmd_token_revoke(args: argparse.Namespace) -> int:
    n = await _call(args, lambda api, c: api.admin_revoke_token(args.token_id, c))
    emit(args.json, {"revoked": n}, f"Revoked token {args.token_id}; at once.")
    return 0


async def cmd_summary(args: argparse.Namespace) -> int:
    summary: Summary = await _call(args, lambda api, c: api.summary(), code=False)
    if args.json:
        emit(True, msgspec.to_builtins(summary))
        return 0
    jobs = "  ".join(f"{k} {v}" for k, v in sorted(summary.jobs.items()) if v) or "none"
    pilots = "  ".join(f"{k} {v}" for k, v in sorted(summary.pilots.items()) if v) or "none"
    lines = [f"jobs     {jobs}", f"pilots   {pilots}"]
    if summary.occupancy is not None:
        lines.append(f"occupancy of ended pilots {100 * summary.occupancy:.0f}%")
    lines.append(f"{'site':<16} {'pilots':>6} {'queued':>6} {'in use':>6}  mode")
    for s in summary.sites:
        lines.append(
            f"{s.name:<16} {s.pilots_running:>6} {s.pilots_pending:>6} {s.cpus_in_use:>6}  "
            f"{describe(s.mode, s.max_cpus)}"
        )
    lines += [f"problem: {p}" for p in summary.problems]
    print("\n".join(lines))
    return 0


def _check_save(path: str | None) -> None:
    if path and os.path.lexists(os.path.expanduser(path)):
        raise ConfigError(
            f"{path} already exists; no token was made.", hint="Remove it first, or name another file with --save."
        )
