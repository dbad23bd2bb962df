"""``glidein-server init``: a state directory with a CA, a TLS certificate and the operator's token."""

from __future__ import annotations

import argparse
import os

import msgspec

from glidein_client.wire.errors import ConfigError
from glidein_client.wire.schema import Role
from glidein_server import tls, totp
from glidein_server.commands.common import emit, open_state_store
from glidein_server.commands.operator import issuer
from glidein_server.http.admin import mint
from glidein_server.settings import ServerSettings, StateDir
from glidein_server.store.postgres import is_postgres_url


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    init = sub.add_parser(
        "init",
        parents=[common],
        help="create a state directory with a CA and TLS certificate; print the operator token and TOTP enrolment once",
    )
    init.add_argument("path", nargs="?", help="state directory (default: --dir)")
    init.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    init.add_argument("--port", type=int, default=8321)
    init.add_argument(
        "--server-url",
        "--public-url",
        dest="public_url",
        default="",
        help="the URL clients and pilots use, if not https://HOST:PORT (--public-url is the old spelling)",
    )
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
    init.add_argument(
        "--database",
        default="glidein.db",
        help="SQLite file in the state directory (default: glidein.db), or postgresql://USER@HOST:PORT/DB "
        "for a PostgreSQL database that several server replicas share",
    )
    init.set_defaults(handler=cmd_init)


async def cmd_init(args: argparse.Namespace) -> int:
    state = StateDir(args.path or args.dir)
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
        database=args.database,
    )
    names: list[str] = []
    if not insecure:
        names = tls.server_names(args.host, args.public_url, args.tls_name)
        files = tls.create(state.root, names)
        settings = msgspec.structs.replace(settings, tls_cert=files.cert, tls_key=files.key, tls_ca=files.ca_cert)
    state.write(settings)
    key = totp.load_or_create_key(state.root / settings.totp_key_file)
    async with open_state_store(state, settings) as store:
        token = (await mint(store, Role.OPERATOR, "operator")).token
        secret, uri = await totp.enrol(store, key, "operator", issuer=issuer(state, settings))
    if not is_postgres_url(settings.database):
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
        f"Settings, each explained: {state.config_path}",
        f"Start it with: glidein-server --dir {state.root} serve",
    ]
    emit(
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
