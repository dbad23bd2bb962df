"""`glidein-pilot run | self-test`: started by the pilot job on a worker node."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from glidein_client.pilot.channels.staged import CHANNELS, open_channel
from glidein_client.pilot.hardening import harden, take_token
from glidein_client.pilot.isolation import ISOLATIONS, choose_isolation
from glidein_client.pilot.pilot import Pilot
from glidein_client.pilot.resources import detect
from glidein_client.pilot.selftest import self_test
from glidein_client.pilot.settings import PilotSettings
from glidein_client.wire.errors import GlideinError
from glidein_client.wire.secrets import read_secret_file
from glidein_client.wire.units import parse_duration_s, parse_memory_mb


def _units(parse: Callable[[str], float]) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            return parse(text)
        except (GlideinError, ValueError) as exc:
            raise argparse.ArgumentTypeError(getattr(exc, "message", str(exc))) from None

    return convert


def _plain_or(parse: Callable[[str], int]) -> Callable[[str], float]:
    """A plain number as it is (the old ``--*-mb``/``--*-s`` spellings), else with units."""

    def read(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            return parse(text)

    return read


_size_mb = _units(lambda t: int(_plain_or(parse_memory_mb)(t)))
_seconds = _units(_plain_or(parse_duration_s))
_seconds_int = _units(lambda t: int(_plain_or(parse_duration_s)(t)))


def _option(sp: argparse.ArgumentParser, name: str, old: str | None, **kw: Any) -> None:
    """``name`` with its help; ``old`` (an earlier spelling, still on already-submitted pilots' command
    lines) as a hidden alias of it."""
    dest = kw.pop("dest", None) or name.lstrip("-").replace("-", "_")
    sp.add_argument(name, dest=dest, **kw)
    if old is not None:
        kw.update(help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        kw.pop("required", None)
        sp.add_argument(old, dest=dest, **kw)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glidein-pilot", description="A glidein pilot: claims and runs jobs.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, text in (("run", "run the pilot"), ("self-test", "check this node and the server, then exit")):
        sp = sub.add_parser(name, help=text)
        _option(sp, "--url", "--server-url", default=None, help="the glidein server's URL (required)")
        sp.add_argument("--token-file", required=True, help="the pilot's token (mode 0600)")
        sp.add_argument(
            "--ca-file",
            default=os.environ.get("GLIDEIN_CA_FILE") or None,
            help="CA certificate to trust for the server (default: $GLIDEIN_CA_FILE)",
        )
        sp.add_argument("--site", default="", help="site name (for logs)")
        sp.add_argument("--scratch", default=os.environ.get("TMPDIR", "/tmp"), help="scratch directory")
        sp.add_argument("--cpus", type=int, help="slots to offer (default: detected)")
        _option(
            sp,
            "--memory",
            "--memory-mb",
            dest="memory_mb",
            type=_size_mb,
            metavar="SIZE",
            help="memory to offer, e.g. 2G (default: detected)",
        )
        sp.add_argument("--gpus", type=int, help="GPUs to offer (default: detected)")
        _option(
            sp,
            "--disk",
            "--disk-mb",
            dest="disk_mb",
            type=_size_mb,
            metavar="SIZE",
            help="scratch space to offer, e.g. 10G (default: detected)",
        )
        _option(
            sp,
            "--walltime",
            "--walltime-s",
            dest="walltime_s",
            type=_seconds_int,
            metavar="DURATION",
            help="own walltime, e.g. 2h (default: from the batch system)",
        )
        _option(
            sp,
            "--fallback-walltime",
            "--fallback-walltime-s",
            dest="fallback_walltime_s",
            type=_seconds_int,
            metavar="DURATION",
            help="walltime to assume when the batch system does not tell the pilot's end time, e.g. 2h",
        )
        _option(
            sp,
            "--idle-timeout",
            "--idle-timeout-s",
            dest="idle_timeout_s",
            type=_seconds,
            metavar="DURATION",
            default=120.0,
            help="leave after this long without work, e.g. 2m (default 2m)",
        )
        _option(
            sp,
            "--prefetch",
            "--prefetch-s",
            dest="prefetch_s",
            type=_seconds,
            metavar="DURATION",
            default=2.0,
            help="keep about this long of short jobs per slot claimed ahead, e.g. 2s (0: never; default 2s)",
        )
        _option(
            sp,
            "--min-disk",
            "--min-disk-mb",
            dest="min_disk_mb",
            type=_size_mb,
            metavar="SIZE",
            default=100,
            help="free scratch space the self-test asks for, e.g. 100M (default 100M)",
        )
        sp.add_argument(
            "--require",
            action="append",
            default=[],
            metavar="CMD",
            help="a command jobs need on this node; the self-test fails without it (repeatable)",
        )
        sp.add_argument(
            "--channel",
            choices=CHANNELS,
            default="direct",
            help="how to reach the server: direct; relay (--url is the login node's relay); "
            "mailbox (files in --mailbox-dir); relay and mailbox take files from --staging-dir",
        )
        sp.add_argument("--staging-dir", help="the site's staging area on the shared filesystem (relay, mailbox)")
        sp.add_argument("--mailbox-dir", help="this pilot's mailbox directory on the shared filesystem (mailbox)")
        sp.add_argument(
            "--isolation",
            choices=("auto", *ISOLATIONS),
            default="auto",
            help="how jobs are kept from the pilot and each other (default: the strongest available)",
        )
        sp.add_argument("--apptainer-image", help="the image jobs run in with --isolation apptainer")
        _option(
            sp,
            "--signal-grace",
            "--signal-grace-s",
            dest="signal_grace_s",
            type=_seconds,
            metavar="DURATION",
            default=0.0,
            help="time the batch system leaves between its warning signal (SIGTERM or SIGUSR1) and its kill, "
            "e.g. 5m (Slurm: --signal=B:TERM@SECONDS, or KillWait): jobs that end within it finish, the "
            "others are interrupted (default 0)",
        )
        sp.add_argument(
            "--drain-file",
            help="when this file appears the pilot takes no more jobs, lets its running jobs finish and leaves "
            "(glidein-client drain writes it)",
        )
        sp.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.url:  # required, under either of its names
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices[args.cmd].error("the following arguments are required: --url")
    # Absolute paths only: jobs are spawned with their sandbox as the working directory (spawn.py).
    for name in ("scratch", "staging_dir", "mailbox_dir", "drain_file"):
        if getattr(args, name, None):
            setattr(args, name, os.path.abspath(getattr(args, name)))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s pilot: %(message)s"
    )
    try:
        sys.exit(asyncio.run(_main(args)))
    except GlideinError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


async def _main(args: argparse.Namespace) -> int:
    if args.cmd == "run":
        harden()  # umask 077, non-dumpable, child subreaper: before the token is read
        token = take_token(args.token_file)
    else:
        token = read_secret_file(args.token_file, what="pilot token")
    scratch = Path(args.scratch)
    async with open_channel(
        args.channel,
        server_url=args.url,
        token=token,
        ca_file=args.ca_file,
        staging_dir=args.staging_dir,
        mailbox_dir=args.mailbox_dir,
    ) as channel:
        if args.cmd == "self-test":
            result = await self_test(
                scratch, min_disk_mb=args.min_disk_mb, required_commands=args.require, server_check=channel.check
            )
            for check in result.checks:
                print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
            return 0 if result.ok else 1
        detected = await detect(
            scratch,
            cpus=args.cpus,
            memory_mb=args.memory_mb,
            gpus=args.gpus,
            disk_mb=args.disk_mb,
            walltime_s=args.walltime_s,
            fallback_walltime_s=args.fallback_walltime_s,
        )
        isolation = await choose_isolation(
            args.isolation, apptainer_image=args.apptainer_image, workdir=await asyncio.to_thread(_workdir, scratch)
        )
        try:
            pilot = Pilot(
                channel,
                detected,
                PilotSettings(
                    scratch=scratch,
                    idle_timeout_s=args.idle_timeout_s,
                    prefetch_s=args.prefetch_s,
                    min_disk_mb=args.min_disk_mb,
                    required_commands=tuple(args.require),
                    isolation=isolation,
                    signal_grace_s=args.signal_grace_s,
                    drain_file=Path(args.drain_file) if args.drain_file else None,
                ),
            )
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGINT, pilot.request_stop, "received SIGINT")
            for sig, why in ((signal.SIGTERM, "received SIGTERM"), (signal.SIGUSR1, "received SIGUSR1")):
                loop.add_signal_handler(sig, pilot.warned, why)  # the batch system's warning: graceful
            return await pilot.run()
        finally:
            isolation.close()  # every job has ended by now


def _workdir(scratch: Path) -> str | None:
    """The scratch directory, made if need be, for what the isolation keeps on disk (its copy of
    /etc): it goes with the batch job even if the pilot is killed. None (the system's temporary
    directory) when it cannot be made; the self-test then says why."""
    try:
        scratch.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return str(scratch)


if __name__ == "__main__":
    main()
