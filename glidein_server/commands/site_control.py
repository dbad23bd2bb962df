"""``glidein-server site drain|pause|resume|cap NAME``: the operator's hand on a site.

They write the site's mode and cap into the state directory's store; a running server applies
them to the next demand and the next claim. ``glidein-server site show NAME`` (and the summary,
`glidein status --summary`, and `glidein-client status` at the site) shows what is set.
"""

from __future__ import annotations

import argparse

from glidein_client.wire.codec import convert
from glidein_client.wire.errors import ConfigError
from glidein_client.wire.schema import Name, SiteMode
from glidein_server.commands.common import emit, open_state_store, state_dir
from glidein_server.policy.site_control import describe

_ACTIONS = {
    "drain": (SiteMode.DRAINING, "stop its pilots claiming and let running jobs finish; then its pilots leave"),
    "pause": (SiteMode.PAUSED, "no new pilots and no new claims until resumed"),
    "resume": (SiteMode.OPEN, "open it again: pilots and claims as the demand says"),
}


def register(ssub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """Add the actions to ``site``'s subparsers."""
    for action, (mode, text) in _ACTIONS.items():
        p = ssub.add_parser(action, parents=[common], help=text)
        p.add_argument("name")
        p.set_defaults(handler=cmd_mode, mode=mode)
    cap = ssub.add_parser("cap", parents=[common], help="let the site's jobs hold at most N cores at once")
    cap.add_argument("name")
    cap.add_argument("cores", help="the most cores at once, or 'none' to lift the cap")
    cap.set_defaults(handler=cmd_cap)
    show = ssub.add_parser("show", parents=[common], help="what the operator set for a site, and what it runs")
    show.add_argument("name")
    show.set_defaults(handler=cmd_show)


async def cmd_mode(args: argparse.Namespace) -> int:
    name = convert(args.name, Name, what="site name")
    mode: SiteMode = args.mode
    async with open_state_store(state_dir(args)) as store:
        await store.set_site_mode(name, mode)
    return await cmd_show(args, f"site {name}: {mode.value}.")


def parse_cap(value: object, example: str) -> int | None:
    """A cap as given on the command line: a whole number of cores, or none/off/no to lift it."""
    text = str(value).strip().lower()
    if text in ("none", "off", "no"):
        return None
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ConfigError(
        f"{value!r} is not a number of cores.",
        hint=f"Give a whole number of at least 1, e.g. `{example}`, or 'none' to lift the cap "
        "(`site pause` stops new work altogether).",
    )


async def cmd_cap(args: argparse.Namespace) -> int:
    name = convert(args.name, Name, what="site name")
    cores = parse_cap(args.cores, f"glidein-server site cap {name} 64")
    async with open_state_store(state_dir(args)) as store:
        await store.set_site_cap(name, cores)
    return await cmd_show(args, f"site {name}: " + (f"capped at {cores} cores." if cores else "no cap."))


async def cmd_show(args: argparse.Namespace, head: str = "") -> int:
    name = convert(args.name, Name, what="site name")
    async with open_state_store(state_dir(args)) as store:
        summary = await store.summary(None)
    site = next((s for s in summary.sites if s.name == name), None)
    if site is None:
        emit(args.json, {"site": name, "mode": "open", "max_cpus": None}, head or f"site {name}: open (never seen)")
        return 0
    obj = {
        "site": name,
        "mode": site.mode.value,
        "max_cpus": site.max_cpus,
        "cpus_in_use": site.cpus_in_use,
        "pilots_running": site.pilots_running,
        "pilots_pending": site.pilots_pending,
        "pilot_failure": site.pilot_failure,
    }
    lines = [head] if head else []
    lines += [
        f"site {name}: {describe(site.mode, site.max_cpus)}",
        f"  {site.cpus_in_use} cores in use; pilots: {site.pilots_running} running, {site.pilots_pending} pending",
    ]
    if site.pilot_failure:
        lines.append(f"  last pilot that failed at start: {site.pilot_failure}")
    emit(args.json, obj, *lines)
    return 0
