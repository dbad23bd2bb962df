"""``glidein``: submit jobs, watch them, fetch their outputs.

    glidein submit --cpus 4 --memory 2G --walltime 10m -i data.txt -o result.txt -- python3 analyse.py data.txt
    glidein submit --script run.sh -i data.txt -o result.txt
    glidein submit jobs.toml                 # many jobs; see glidein_client/user/jobfile.py or examples/jobs.toml
    glidein status [IDS...] [--state S] [--label k=v] [--all]
    glidein wait [IDS...] [--timeout 10m] [--label k=v]   # no ids: until none of your jobs is active
    glidein fetch IDS [-d DIR]
    glidein cancel IDS / glidein retry IDS [--memory 4G] [--walltime 2h] [--cpus 2] [--site NAME]
    glidein hold IDS [--reason TEXT] / glidein release IDS
    glidein logs ID [--attempt N]
    glidein show ID                          # where and how each attempt ran: host, versions, CPU, hashes

IDS are numbers and ranges: ``7``, ``1-20``, ``1-5,9``; ``cancel``, ``retry``, ``hold``, ``release``,
``fetch`` and ``wait`` also choose your jobs by ``--label k=v`` (repeatable: all must match).
Every command takes ``--json`` for scripts.
The server and token come from ``--url``/``--token-file``, the environment or the config file
(see :mod:`glidein_client.user.config`).

Exit codes: 0 success; 1 an error (or, for ``wait``, a job that failed or was cancelled);
2 a usage error; 3 ``wait`` timed out; 130 interrupted.

This module is the entry point: the top-level options, ``--`` handling and error reporting.
The subcommands live in :mod:`glidein_client.user.commands`, one module each.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from glidein_client.user.args import parse_ids
from glidein_client.user.commands import register_all
from glidein_client.user.selection import missing_selection
from glidein_client.user.session import EXIT_ERROR, EXIT_INTERRUPTED, emit_json
from glidein_client.wire.errors import GlideinError

__all__ = ["build_parser", "main", "parse_args", "parse_ids", "run"]

#: Top-level options that take a value (so the word after them is not the subcommand).
_VALUE_OPTIONS = ("--url", "--server-url", "--token-file", "--ca-file")


class _JsonErrors(argparse.ArgumentParser):
    """A parser for ``--json`` runs: a usage error is also one JSON object on stdout, for scripts."""

    def error(self, message: str) -> NoReturn:
        emit_json({"error": message, "hint": f"See: {self.prog} --help", "kind": "UsageError"})
        super().error(message)


def build_parser(*, json_errors: bool = False) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts")
    common.add_argument("--url", "--server-url", dest="url", default=argparse.SUPPRESS, help="server URL")
    common.add_argument("--token-file", default=argparse.SUPPRESS, help="file holding your token")
    common.add_argument("--ca-file", default=argparse.SUPPRESS, help="CA file that signed the server's certificate")

    parser = (_JsonErrors if json_errors else argparse.ArgumentParser)(
        prog="glidein",
        description="Run jobs on pilots at computing sites: submit, watch, fetch outputs.",
        epilog="Config: ~/.config/glidein/config.toml (url, token_file, ca_file) or GLIDEIN_URL, "
        "GLIDEIN_TOKEN_FILE. Set GLIDEIN_DEBUG=1 for details on errors.",
    )
    parser.add_argument("--json", action="store_true", default=False, help="print JSON for scripts")
    parser.add_argument("--url", "--server-url", dest="url", default=None, help="server URL (or GLIDEIN_URL)")
    parser.add_argument("--token-file", default=None, help="file holding your token (or GLIDEIN_TOKEN_FILE)")
    parser.add_argument(
        "--ca-file", default=None, help="CA file that signed the server's certificate (or GLIDEIN_CA_FILE)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register_all(sub, common)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; for ``submit`` everything after the first ``--`` is the job's command."""
    argv = list(argv)
    parser = build_parser(json_errors="--json" in argv[: argv.index("--") if "--" in argv else len(argv)])
    command: list[str] = []
    if _command_word(argv) == "submit" and "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
        if not command:
            parser.error("nothing follows '--'; give the command to run, e.g. -- python3 analyse.py")
    if _command_word(argv) == "submit" and not command:
        args, extra = parser.parse_known_args(argv)
        if extra:
            words = " ".join([*([args.jobfile] if args.jobfile else []), *extra])
            parser.error(
                f"unrecognized arguments: {' '.join(extra)}; to run a command, put it after '--': "
                f"glidein submit [options] -- {words}"
            )
    args = parser.parse_args(argv)
    args.argv = command
    if hasattr(args, "ids"):
        args.ids = list(dict.fromkeys(i for group in args.ids for i in group))
    if missing_selection(args):
        what = "give job ids (e.g. 7 or 1-20), or --label K=V to choose your jobs by label"
        _subparser(parser, args.command).error(what)
    return args


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUE_OPTIONS:
            skip = True
        elif word == "--":
            return None
        elif not word.startswith("-"):
            return word
    return None


def run(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code; errors become plain messages."""
    debug = os.environ.get("GLIDEIN_DEBUG", "") not in ("", "0")
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        code: int = asyncio.run(args.handler(args))
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except GlideinError as exc:
        if debug:
            traceback.print_exc()
        if getattr(args, "json", False):  # scripts read stdout: one JSON object saying what went wrong
            problems = {"errors": exc.fields["errors"]} if exc.fields.get("errors") else {}
            emit_json({"error": exc.message, "hint": exc.hint, "kind": type(exc).__name__, **problems})
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (e.g. `glidein status | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except Exception as exc:
        if debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set GLIDEIN_DEBUG=1 for details)", file=sys.stderr)
        return EXIT_ERROR


def main() -> NoReturn:
    sys.exit(run())


if __name__ == "__main__":
    main()
