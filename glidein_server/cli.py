"""`glidein-server`: create a state directory, manage users, sites and tokens, serve the API.

The commands other than ``serve`` work on the state directory directly, on the server host
(file access is the credential). Operators elsewhere use the API's ``/api/v1/admin`` routes,
which need a token and a one-time code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import msgspec

from glidein_client.wire.codec import convert
from glidein_client.wire.errors import ConfigError, GlideinError, NotFoundError
from glidein_client.wire.schema import ROLE_SCOPES, Name, Role, Scope
from glidein_client.wire.units import format_duration, parse_duration_s
from glidein_server import tls, totp
from glidein_server.http.admin import mint
from glidein_server.server import Server, open_store
from glidein_server.settings import ServerSettings, StateDir
from glidein_server.store.base import Store

ENV_DIR = "GLIDEIN_SERVER_DIR"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glidein-server", description="The glidein server: job queue and site demand.")
    p.add_argument(
        "--dir",
        default=os.environ.get(ENV_DIR, "glidein-server"),
        help=f"state directory (default: ${ENV_DIR} or ./glidein-server)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    sub = p.add_subparsers(dest="cmd", required=True)
    init = sub.add_parser(
        "init",
        parents=[common],
        help="create a state directory with a CA and TLS certificate; print the operator token and TOTP enrolment once",
    )
    init.add_argument("path", nargs="?", help="state directory (default: --dir)")
    init.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    init.add_argument("--port", type=int, default=8321)
    init.add_argument("--public-url", default="", help="URL clients and pilots use, if not https://HOST:PORT")
    init.add_argument(
        "--tls-name",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name or address for the server certificate (repeatable)",
    )
    init.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP without TLS, on a loopback address only (for trying glidein out)",
    )
    init.add_argument(
        "--insecure-http-any-host",
        action="store_true",
        help="with --insecure-http: allow plain HTTP on other addresses (behind a TLS proxy)",
    )
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    for noun in ("user", "site"):
        sp = sub.add_parser(noun, help=f"manage {noun}s")
        ssub = sp.add_subparsers(dest="action", required=True)
        add = ssub.add_parser("add", parents=[common], help=f"add a {noun} and print its token once")
        add.add_argument("name")
        add.add_argument("--expires-in", help="the token expires after this long (e.g. 90d; default: never)")
        rev = ssub.add_parser(
            "revoke",
            parents=[common],
            help=f"revoke every token of a {noun}" + (" and of its pilots" if noun == "site" else ""),
        )
        rev.add_argument("name")
    tok = sub.add_parser("token", help="mint, list and revoke tokens")
    tsub = tok.add_subparsers(dest="action", required=True)
    tadd = tsub.add_parser("add", parents=[common], help="mint a token and print it once")
    tadd.add_argument("--role", required=True, choices=[r.value for r in Role if r is not Role.PILOT])
    tadd.add_argument("--subject", required=True, help="user, site or operator name")
    tadd.add_argument("--scopes", help="comma-separated: read, write, admin (default: all the role may use)")
    tadd.add_argument("--expires-in", help="the token expires after this long (e.g. 12h; default: never)")
    tlist = tsub.add_parser("list", parents=[common], help="list tokens (never the tokens themselves)")
    tlist.add_argument("--role", choices=[r.value for r in Role])
    tlist.add_argument("--subject")
    tlist.add_argument("--revoked", action="store_true", help="include revoked tokens")
    trev = tsub.add_parser("revoke", parents=[common], help="revoke a token by its id (see `token list`)")
    trev.add_argument("token_id")
    op = sub.add_parser("operator", help="operators' second factor")
    osub = op.add_subparsers(dest="action", required=True)
    enrol = osub.add_parser(
        "totp-enrol",
        parents=[common],
        help="set up (or replace) an operator's TOTP and print its provisioning URI once",
    )
    enrol.add_argument("--subject", default="operator", help="the operator (default: operator)")
    tl = sub.add_parser("tls", help="the server's TLS certificate")
    tlsub = tl.add_subparsers(dest="action", required=True)
    renew = tlsub.add_parser(
        "renew",
        parents=[common],
        help="issue a new server certificate from the server's CA (creating the CA if missing)",
    )
    renew.add_argument(
        "--tls-name",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name or address for the certificate (repeatable)",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(asyncio.run(_dispatch(args)) or 0)
    except GlideinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


async def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "init":
        return await _init(StateDir(args.path or args.dir), args)
    if args.cmd == "serve":
        return await _serve(args)
    state = StateDir(args.dir)
    if args.cmd in ("user", "site"):
        role = Role.USER if args.cmd == "user" else Role.SITE
        if args.action == "revoke":
            return await _revoke_subject(state, role, args.name, args.json)
        return await _add(state, role, args.name, None, args.expires_in, args.json)
    if args.cmd == "token":
        if args.action == "add":
            return await _add(state, Role(args.role), args.subject, args.scopes, args.expires_in, args.json)
        if args.action == "list":
            return await _list(state, args)
        return await _revoke_token(state, args.token_id, args.json)
    if args.cmd == "operator":
        return await _enrol(state, args.subject, args.json)
    return _renew_tls(state, args)


@asynccontextmanager
async def _store(state: StateDir, settings: ServerSettings | None = None) -> AsyncIterator[Store]:
    store = open_store(state, settings or state.load())
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _print(as_json: bool, obj: dict[str, object], *lines: str) -> None:
    print(json.dumps(obj) if as_json else "\n".join(lines))


async def _init(state: StateDir, args: argparse.Namespace) -> int:
    if state.config_path.exists():
        raise ConfigError(
            f"{state.root} already holds a glidein server.",
            hint="Use another directory, or `glidein-server user add` for more tokens.",
        )
    insecure = args.insecure_http or args.insecure_http_any_host
    if insecure and not args.insecure_http_any_host and not tls.is_loopback(args.host):
        raise ConfigError(
            f"Plain HTTP is served on loopback addresses only, not on {args.host}.",
            hint="Leave out --insecure-http to serve HTTPS with a CA made now, or add "
            "--insecure-http-any-host if a TLS proxy in front of the server handles the network.",
        )
    state.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        public_url=args.public_url,
        insecure_http=insecure,
        insecure_http_any_host=args.insecure_http_any_host,
    )
    names: list[str] = []
    if not insecure:
        names = tls.server_names(args.host, args.public_url, args.tls_name)
        files = tls.create(state.root, names)
        settings = msgspec.structs.replace(settings, tls_cert=files.cert, tls_key=files.key, tls_ca=files.ca_cert)
    state.write(settings)
    key = totp.load_or_create_key(state.root / settings.totp_key_file)
    async with _store(state, settings) as store:
        token = (await mint(store, Role.OPERATOR, "operator")).token
        secret, uri = await totp.enrol(store, key, "operator", issuer=_issuer(state, settings))
    os.chmod(state.database(settings), 0o600)  # token hashes and encrypted TOTP secrets
    ca = state.ca_file(settings)
    lines = [f"Created a glidein server in {state.root}; it will serve {state.url(settings)}."]
    if ca is not None:
        lines += [
            f"TLS: a private CA in {ca} signed the server's certificate for {', '.join(names)}.",
            "  Give that CA file to users, sites and pilots: ca_file in their config, --ca-file, or GLIDEIN_CA_FILE.",
            f"  Its key ({state.root / tls.TLS_DIR / tls.CA_KEY}) stays here.",
            "  More names: glidein-server tls renew --tls-name NAME",
        ]
    else:
        lines.append("WARNING: plain HTTP without TLS; tokens travel in clear text. Use it only to try glidein out.")
    lines += [
        "",
        f"Operator token (shown only now; keep it secret):\n{token}",
        "",
        "Operator one-time codes (TOTP) for /api/v1/admin actions: add this to an authenticator app (shown only now):",
        uri,
        f"  or enter the secret by hand: {secret}",
        "",
        f"Start it with: glidein-server --dir {state.root} serve",
    ]
    _print(
        args.json,
        {
            "dir": str(state.root),
            "url": state.url(settings),
            "ca_file": str(ca) if ca else None,
            "operator_token": token,
            "totp_uri": uri,
        },
        *lines,
    )
    return 0


def _expires_at(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return time.time() + parse_duration_s(text, field="--expires-in")
    except GlideinError as exc:
        raise ConfigError(exc.message, hint="Give a duration such as 12h, 90d or 3600.") from None


def _scopes(role: Role, text: str | None) -> list[Scope] | None:
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


async def _add(
    state: StateDir, role: Role, name: str, scopes: str | None, expires_in: str | None, as_json: bool
) -> int:
    convert(name, Name, what=f"{role.value} name")
    async with _store(state) as store:
        grant = await mint(store, role, name, expires_at=_expires_at(expires_in), scopes=_scopes(role, scopes))
    until = (
        f", valid until {time.strftime('%Y-%m-%d %H:%M', time.localtime(grant.expires_at))}" if grant.expires_at else ""
    )
    _print(
        as_json,
        {role.value: name, "token": grant.token, "id": grant.id, "expires_at": grant.expires_at},
        f"Token {grant.id} for {role.value} {name!r}{until} (shown only now; store it in a file with mode 0600):",
        grant.token,
    )
    return 0


async def _revoke_subject(state: StateDir, role: Role, name: str, as_json: bool) -> int:
    async with _store(state) as store:
        ids = await store.revoke_subject(role, name, time.time())
    _print(
        as_json,
        {"revoked": len(ids)},
        f"Revoked {len(ids)} token(s) of {role.value} {name!r}"
        + (" and its pilots" if role is Role.SITE else "")
        + "; a running server stops accepting them within 2 s.",
    )
    return 0


async def _revoke_token(state: StateDir, token_id: str, as_json: bool) -> int:
    async with _store(state) as store:
        ids = await store.revoke_token(token_id, time.time())
    if not ids:
        raise NotFoundError(f"No active token has the id {token_id!r}.", hint="`glidein-server token list` shows them.")
    _print(as_json, {"revoked": len(ids)}, f"Revoked token {token_id}; a running server stops accepting it within 2 s.")
    return 0


async def _list(state: StateDir, args: argparse.Namespace) -> int:
    async with _store(state) as store:
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
    now = time.time()
    print(f"{'ID':<17} {'ROLE':<9} {'SUBJECT':<20} {'SCOPES':<17} STATE")
    for t in tokens:
        state_text = (
            "revoked"
            if t.revoked_at
            else "expired"
            if t.expires_at and t.expires_at < now
            else f"expires in {format_duration(t.expires_at - now)}"
            if t.expires_at
            else "active"
        )
        print(f"{t.id:<17} {t.role.value:<9} {t.subject:<20} {','.join(s.value for s in t.scopes):<17} {state_text}")
    return 0


async def _enrol(state: StateDir, subject: str, as_json: bool) -> int:
    convert(subject, Name, what="operator name")
    settings = state.load()
    key = totp.load_or_create_key(state.root / settings.totp_key_file)
    async with _store(state, settings) as store:
        secret, uri = await totp.enrol(store, key, subject, issuer=_issuer(state, settings))
    _print(
        as_json,
        {"subject": subject, "totp_uri": uri},
        f"One-time codes for operator {subject!r}; add this to an authenticator app (shown only now; any older "
        "enrolment no longer works):",
        uri,
        f"  or enter the secret by hand: {secret}",
        "A running server uses it at once.",
    )
    return 0


def _issuer(state: StateDir, settings: ServerSettings) -> str:
    """How authenticator apps name this server's codes."""
    return f"glidein {urlsplit(state.url(settings)).hostname or 'server'}"


def _renew_tls(state: StateDir, args: argparse.Namespace) -> int:
    settings = state.load()
    names = tls.server_names(settings.host, settings.public_url, args.tls_name)
    files = tls.default_files()
    if settings.tls_cert and settings.tls_key and settings.tls_ca:
        files = tls.TlsFiles(ca_cert=settings.tls_ca, ca_key=files.ca_key, cert=settings.tls_cert, key=settings.tls_key)
    if (state.root / files.ca_key).exists():
        tls.issue(state.root, files, names)
    else:
        files = tls.create(state.root, names)
    state.write(
        msgspec.structs.replace(
            settings, tls_cert=files.cert, tls_key=files.key, tls_ca=files.ca_cert, insecure_http=False
        )
    )
    ca = state.root / files.ca_cert
    _print(
        args.json,
        {"ca_file": str(ca), "names": names},
        f"Issued a server certificate for {', '.join(names)}, signed by the CA in {ca}.",
        "Restart the server to use it.",
    )
    return 0


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Server(args.dir, host=args.host, port=args.port) as srv:
        print(f"glidein server ready on {srv.url}", flush=True)
        await stop.wait()
    return 0


if __name__ == "__main__":
    main()
