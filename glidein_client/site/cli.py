"""`glidein-client once | run | check | status | deploy CONFIG`: keep a site's pilots in line with its demand.

- ``once``: one cycle, for cron. Prints what it did (``--json`` for scripts).
- ``run``: a cycle every ``site.cycle_s`` until SIGTERM or SIGINT.
- ``check``: validates the config, the token file, the batch commands, the scratch directory
  and the server (reachable, token accepted); one line per check, exit 0 when all pass.
- ``status``: the site's demand, its own pilots in the batch system by state, its back-off
  (pilots failing at start) and what a cycle would do now; submits and removes nothing.
- ``deploy``: installs or upgrades the client on the login node named in ``[ssh]`` (a wheel of
  this checkout in a virtualenv there, the config, the token, and a crontab line running
  ``once`` or a systemd --user unit running ``run``); ``--dry-run`` shows what it would do and
  changes nothing.
- ``drain`` / ``resume`` / ``stop-pilots``: see :mod:`glidein_client.site.control`.

With an ``[ssh]`` section in the config, ``once``, ``run`` and ``check`` drive that login node
over one SSH connection (remote mode).

Logs go to stderr, one line per event. A problem prints ``error: <what> <what to do>`` and
exits 1, without a traceback unless ``GLIDEIN_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from typing import Any

import msgspec

from glidein_client.site import cli_control
from glidein_client.site.client import CycleReport, SiteClient, SiteStatus, make_runner
from glidein_client.site.config import SiteConfig, load_site_config
from glidein_client.site.lock import site_lock
from glidein_client.site.runners.local import Runner
from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import GlideinError
from glidein_client.wire.schema import Demand, SiteMode
from glidein_client.wire.units import format_duration

log = logging.getLogger(__name__)

#: Commands each scheduler needs on the submit host.
REQUIRED_COMMANDS: dict[str, tuple[str, ...]] = {
    "local": ("timeout",),
    "slurm": ("sbatch", "squeue", "scancel"),
    "pbs": ("qsub", "qstat", "qdel"),
    "htcondor": ("condor_submit", "condor_q", "condor_rm"),
    "lsf": ("bsub", "bjobs", "bkill"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glidein-client",
        description="Submit and remove pilots on this site to meet the demand of the glidein server.",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    commands = (
        ("once", "run one cycle (for cron) and print what was done"),
        ("run", "run a cycle every site.cycle_s until stopped (SIGTERM or SIGINT)"),
        ("check", "check the config, token, batch commands and server, one line per check"),
        ("status", "show the site's demand, its pilots in the batch system, back-off, and what a cycle would do"),
        ("deploy", "install or upgrade the client on the login node of [ssh] (a crontab line or a systemd unit)"),
        *cli_control.COMMANDS,
    )
    for name, text in commands:
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("config", metavar="CONFIG", help="site config file (see site_configs/local.toml)")
        if name != "run":
            sp.add_argument("--json", action="store_true", help="print JSON for scripts")
        if name == "deploy":
            sp.add_argument("--dry-run", action="store_true", help="show what would change; change nothing")
            sp.add_argument("--source", metavar="DIR", help="glidein checkout to build (default: the running one)")
        sp.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    return p


def main(argv: list[str] | None = None) -> None:
    # Whatever the login shell's umask: pilot tokens, staged inputs, mailbox answers and the
    # pilots started here are the site user's alone.
    os.umask(0o077)
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    debug = os.environ.get("GLIDEIN_DEBUG") == "1"
    try:
        code: int = asyncio.run(_COMMANDS[args.cmd](args))
    except GlideinError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # a bug: one plain line, the traceback only on request
        if debug:
            raise
        print(
            f"error: unexpected {exc.__class__.__name__}: {exc}. Run again with GLIDEIN_DEBUG=1 to see the details.",
            file=sys.stderr,
        )
        code = 1
    sys.exit(code)


# --- once ------------------------------------------------------------------------------------------


async def _once(args: argparse.Namespace) -> int:
    site = await asyncio.to_thread(load_site_config, args.config)
    with site_lock(site.name, args.config):
        async with SiteClient(site) as client:
            try:
                report = await client.cycle()
            except GlideinError as exc:
                partial = exc.fields.get("report")
                if args.json and isinstance(partial, CycleReport):
                    print(json.dumps({**_report_json(site, partial), "error": str(exc)}))
                raise
    if args.json:
        print(json.dumps(_report_json(site, report)))
    else:
        print(_report_text(site, report))
    return 0


def _report_json(site: SiteConfig, report: CycleReport) -> dict[str, Any]:
    return {"site": site.name, **asdict(report)}


def _report_text(site: SiteConfig, report: CycleReport) -> str:
    lines = [
        f"site {site.name}: {report.pilots_text()}",
        f"submitted {len(report.submitted)}: {' '.join(report.submitted) or '-'}",
        f"removed {len(report.removed)}: {' '.join(report.removed) or '-'}",
    ]
    lines += [f"  {reason}" for reason in report.reasons]
    return "\n".join(lines)


# --- status ----------------------------------------------------------------------------------------


async def _status(args: argparse.Namespace) -> int:
    site = await asyncio.to_thread(load_site_config, args.config)
    async with SiteClient(site) as client:
        status = await client.status()
    if args.json:
        print(json.dumps(_status_json(site, status)))
    else:
        print(_status_text(site, status))
    return 0


def _status_json(site: SiteConfig, status: SiteStatus) -> dict[str, Any]:
    d, nxt = status.demand, status.next_cycle
    return {
        "site": site.name,
        "scheduler": site.site.scheduler,
        "demand": msgspec.to_builtins(d),
        "pilots": status.counts(),
        "backoff": {"active": d.backoff_s > 0, "start_failures": d.start_failures, "backoff_s": d.backoff_s},
        "operator": {"mode": d.mode.value, "max_cpus": d.max_cpus},
        "pilot_failure": status.failure,
        "draining": status.draining,
        "idle_outs": status.idle_outs,
        "next_cycle": {"submit": nxt.submit, "remove": list(nxt.remove), "reasons": list(nxt.reasons)},
    }


def _status_text(site: SiteConfig, status: SiteStatus) -> str:
    d, nxt, counts = status.demand, status.next_cycle, status.counts()
    unfit = f"; {d.unfit_jobs} eligible job(s) fit no pilot of this shape" if d.unfit_jobs else ""
    listed = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"
    if d.backoff_s > 0:
        backoff = (
            f"on: {d.start_failures} pilot(s) in a row ended before taking work; no submissions for "
            f"{format_duration(d.backoff_s)}, then one probe pilot"
        )
    elif d.start_failures:
        backoff = f"probing: {d.start_failures} pilot(s) in a row ended before taking work; one pilot at a time"
    else:
        backoff = "none"
    lines = [
        f"site {site.name} ({site.site.scheduler}) at {site.site.server_url}",
        f"  demand     {d.pilots} pilot(s) for {d.jobs:g} job(s), {d.cpus:g} cpus{unfit}",
        f"  pilots     {listed} (its own, in the batch system)",
        f"  back-off   {backoff}",
        f"  next cycle would submit {nxt.submit} and remove {len(nxt.remove)}"
        + (f" ({'; '.join(nxt.reasons)})" if nxt.reasons else ""),
        f"  operator   {_operator_text(d)}",
        *([f"  failing    {status.failure}"] if status.failure else []),
        *([f"  idling     {status.idle_outs}"] if status.idle_outs else []),
        *(
            ["  draining   yes (glidein-client drain): no new pilots; `glidein-client resume` ends it"]
            if status.draining
            else []
        ),
    ]
    return "\n".join(lines)


def _operator_text(d: Demand) -> str:
    """What the server's operator set for this site (`glidein-server site drain|pause|resume|cap`)."""
    text = {
        SiteMode.OPEN: "open",
        SiteMode.DRAINING: "DRAINING: no new pilots or claims; running jobs finish, then the pilots leave",
        SiteMode.PAUSED: "PAUSED: no new pilots or claims until the operator resumes the site",
    }[d.mode]
    return text + (f"; at most {d.max_cpus} cores at once" if d.max_cpus is not None else "")


# --- run -------------------------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    """Cycle until SIGTERM/SIGINT; a second signal stops at once instead of after the cycle."""
    site = await asyncio.to_thread(load_site_config, args.config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        if not stop.is_set():
            log.info("received %s, stopping after the current cycle", sig.name)
            stop.set()
        elif main_task is not None:
            log.warning("received %s again, stopping now", sig.name)
            main_task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        with site_lock(site.name, args.config):
            async with SiteClient(site) as client:
                await client.run_forever(stop=stop)
    except asyncio.CancelledError:
        if len(received) < 2:
            raise
        return 128 + received[-1].value
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


# --- check -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


async def _check(args: argparse.Namespace) -> int:
    checks = await run_checks(args.config)
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}))
    else:
        for c in checks:
            print(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
    return 0 if ok else 1


async def run_checks(config: str, runner: Runner | None = None) -> list[Check]:
    """Every check of ``glidein-client check``; a check that others depend on stops the rest.

    Without ``runner``, the config's own is used: over SSH in remote mode, else this host.
    """
    out: list[Check] = []

    async def step(name: str, fn: Callable[[], Awaitable[str]]) -> bool:
        try:
            detail = await fn()
        except GlideinError as exc:
            out.append(Check(name, False, str(exc)))
            return False
        except OSError as exc:
            out.append(Check(name, False, f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}."))
            return False
        out.append(Check(name, True, detail))
        return True

    try:
        site = await asyncio.to_thread(load_site_config, config)
    except GlideinError as exc:
        return [Check("config", False, str(exc))]
    out.append(
        Check(
            "config",
            True,
            f"{config}: site {site.name}, scheduler {site.site.scheduler}, "
            f"pilots of {site.shape.cpus} core(s), {site.shape.memory_mb} MB, "
            f"{site.shape.walltime_s} s",
        )
    )
    token = ""

    async def read_token() -> str:
        nonlocal token
        token = await asyncio.to_thread(site.read_token)
        return f"{site.site.token_file} is readable by its owner only"

    token_ok = await step("token file", read_token)
    own = runner is None
    runner = runner if runner is not None else make_runner(site)
    try:
        if own and site.ssh is not None and not await _ssh_login(site, runner, step):
            return out
        return await _host_checks(site, runner, out, step, token if token_ok else None)
    finally:
        aclose = getattr(runner, "aclose", None)
        if own and aclose is not None:
            await aclose()


_Step = Callable[[str, Callable[[], Awaitable[str]]], Awaitable[bool]]


async def _ssh_login(site: SiteConfig, runner: Runner, step: _Step) -> bool:
    """Remote mode: the TOTP secret and the login, before the checks that go over it."""
    from glidein_client.site.runners.ssh import SshRunner
    from glidein_client.site.runners.ssh_codes import read_totp_secret

    assert site.ssh is not None and isinstance(runner, SshRunner)
    secret = site.ssh.totp_secret_file
    if secret:

        async def totp() -> str:
            await asyncio.to_thread(read_totp_secret, secret, config=site.path)
            return f"{secret} is readable by its owner only and holds a TOTP secret"

        if not await step("totp secret", totp):
            return False

    async def login() -> str:
        await runner.connection()
        return f"logged in to {runner.target}"

    return await step("ssh login", login)


async def _host_checks(
    site: SiteConfig, runner: Runner, out: list[Check], step: _Step, token: str | None
) -> list[Check]:
    """The checks of the login node (over ``runner``) and of the server."""
    for command in REQUIRED_COMMANDS.get(site.site.scheduler, ()):
        await step(f"command {command}", functools.partial(_find_command, runner, command))

    async def scratch() -> str:
        where = site.site.scratch_dir
        try:
            await runner.makedirs(where, mode=0o700)
            await runner.write_file(os.path.join(where, ".glidein-check"), b"ok\n", mode=0o600)
        except OSError as exc:
            raise GlideinError(
                f"Cannot write in {where} (site.scratch_dir in {site.path}): {exc.strerror or exc}.",
                hint="Choose a directory the user running glidein-client can create and write, on a filesystem "
                "the worker nodes share.",
            ) from None
        return f"{where} is writable"

    await step("scratch dir", scratch)
    if site.site.ca_file:

        async def ca() -> str:
            await asyncio.to_thread(site.read_ca)
            return f"{site.site.ca_file} holds a PEM certificate"

        if not await step("ca file", ca):
            return out  # the server cannot be checked without the CA it is to be trusted with
    # the health check needs no token, so the server is checked even when the token file is bad
    async with ApiClient(site.site.server_url, token, ca_file=site.site.ca_file, timeout_s=30) as api:

        async def health() -> str:
            info = await api.health()
            api_version = info.get("api")
            return f"{site.site.server_url} answers" + (f" (API {api_version})" if api_version else "")

        if not await step("server", health) or token is None:
            return out

        async def demand() -> str:
            d = await api.demand(site.name, site.shape)
            return f"site token accepted; the server wants {d.pilots} pilot(s) here ({d.jobs:g} idle job(s))"

        await step("site token", demand)
    return out


# --- deploy ----------------------------------------------------------------------------------------


async def _deploy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from glidein_client.site.deploy import deploy

    site = await asyncio.to_thread(load_site_config, args.config)
    report = await deploy(site, dry_run=args.dry_run, source=Path(args.source) if args.source else None)
    if args.json:
        print(json.dumps({**asdict(report), "changed": report.changed}))
    else:
        print(report.text())
    return 0


async def _find_command(runner: Runner, command: str) -> str:
    # `command -v` is a shell built-in; the name travels as an argument, never inside the script.
    result = await runner.run(["/bin/sh", "-c", 'command -v -- "$1"', "glidein-check", command], timeout_s=20)
    path = result.stdout.strip()
    if result.returncode != 0 or not path:
        raise GlideinError(
            f"{command} was not found on PATH.",
            hint="Install it or add its directory to PATH for the user running glidein-client.",
        )
    return f"found at {path}"


_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "once": _once,
    "run": _run,
    "check": _check,
    "status": _status,
    "deploy": _deploy,
    **cli_control.HANDLERS,
}


if __name__ == "__main__":
    main()
