"""`glidein-server`: create a state directory, manage users, sites and tokens, serve the API.

The commands other than ``serve`` work on the state directory directly, on the server host
(file access is the credential). Operators elsewhere use the API's ``/api/v1/admin`` routes,
which need a token and a one-time code.

This module is the entry point: top-level options and error reporting. The subcommands live in
:mod:`glidein_server.commands`, one module each.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from glidein_client.wire.errors import GlideinError
from glidein_server.commands import register_all
from glidein_server.commands.common import ENV_DIR, common_options, default_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glidein-server", description="The glidein server: job queue and site demand.")
    p.add_argument("--dir", default=default_dir(), help=f"state directory (default: ${ENV_DIR} or ./glidein-server)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="cmd", required=True)
    register_all(sub, common_options())
    return p


async def _dispatch(args: argparse.Namespace) -> int:
    code: int = await args.handler(args)
    return code


def _loop_factory(args: argparse.Namespace) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``serve`` runs on uvloop where it is installed: the server spends about a quarter less CPU per
    request than on asyncio's own loop. The other commands keep asyncio's."""
    if args.cmd != "serve" or sys.version_info < (3, 11) or os.environ.get("GLIDEIN_ASYNCIO_LOOP") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run(args: argparse.Namespace, coro: Coroutine[Any, Any, int]) -> int:
    factory = _loop_factory(args)
    if factory is None:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    debug = os.environ.get("GLIDEIN_DEBUG", "") not in ("", "0")
    try:
        sys.exit(_run(args, _dispatch(args)) or 0)
    except GlideinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set GLIDEIN_DEBUG=1 for details)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
