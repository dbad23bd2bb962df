"""``glidein-server tls renew``: a new server certificate from the server's CA."""

from __future__ import annotations

import argparse

import msgspec

from glidein_server import tls
from glidein_server.commands.common import emit, state_dir


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    tl = sub.add_parser("tls", parents=[common], help="the server's TLS certificate")
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
    renew.set_defaults(handler=cmd_renew)


async def cmd_renew(args: argparse.Namespace) -> int:
    state = state_dir(args)
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
    emit(
        args.json,
        {"ca_file": str(ca), "names": names},
        f"Issued a server certificate for {', '.join(names)}, signed by the CA in {ca}.",
        "Restart the server to use it.",
    )
    return 0
