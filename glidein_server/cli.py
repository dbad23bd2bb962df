"""`glidein-server`: create a state directory, add users and sites, serve the API."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from glidein_client.errors import ConfigError, GlideinError
from glidein_client.schema import Name, Role, convert

from .server import Server, mint_token, open_store
from .settings import ServerSettings, StateDir

ENV_DIR = "GLIDEIN_SERVER_DIR"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glidein-server", description="The glidein server: job queue and site demand.")
    p.add_argument("--dir", default=os.environ.get(ENV_DIR, "glidein-server"),
                   help=f"state directory (default: ${ENV_DIR} or ./glidein-server)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    sub = p.add_subparsers(dest="cmd", required=True)
    init = sub.add_parser("init", parents=[common], help="create a state directory and print the operator token once")
    init.add_argument("path", nargs="?", help="state directory (default: --dir)")
    init.add_argument("--host", default="127.0.0.1")
    init.add_argument("--port", type=int, default=8321)
    init.add_argument("--public-url", default="", help="URL clients and pilots use, if not http://HOST:PORT")
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    for noun in ("user", "site"):
        sp = sub.add_parser(noun, help=f"manage {noun}s")
        ssub = sp.add_subparsers(dest="action", required=True)
        add = ssub.add_parser("add", parents=[common], help=f"add a {noun} and print its token once")
        add.add_argument("name")
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
    return await _add(StateDir(args.dir), Role.USER if args.cmd == "user" else Role.SITE, args.name, args.json)


async def _init(state: StateDir, args: argparse.Namespace) -> int:
    if state.config_path.exists():
        raise ConfigError(f"{state.root} already holds a glidein server.",
                          hint="Use another directory, or `glidein-server user add` for more tokens.")
    settings = ServerSettings(host=args.host, port=args.port, public_url=args.public_url)
    state.write(settings)
    store = open_store(state, settings)
    await store.open()
    try:
        token = await mint_token(store, Role.OPERATOR, "operator")
    finally:
        await store.close()
    if args.json:
        print(json.dumps({"dir": str(state.root), "url": state.url(settings), "operator_token": token}))
    else:
        print(f"Created a glidein server in {state.root}; it will serve {state.url(settings)}.")
        print(f"Operator token (shown only now; keep it secret):\n{token}")
        print(f"Start it with: glidein-server --dir {state.root} serve")
    return 0


async def _add(state: StateDir, role: Role, name: str, as_json: bool) -> int:
    convert(name, Name, what=f"{role.value} name")
    settings = state.load()
    store = open_store(state, settings)
    await store.open()
    try:
        token = await mint_token(store, role, name)
    finally:
        await store.close()
    if as_json:
        print(json.dumps({role.value: name, "token": token}))
    else:
        print(f"Token for {role.value} {name!r} (shown only now; store it in a file with mode 0600):\n{token}")
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
