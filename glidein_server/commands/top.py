"""``glidein-server top``: the dashboard's overview in a terminal, refreshed, for an operator on the server host.

It reads the server's database directly (the state directory's config names it), so it needs no
token: whoever can read the database sees this anyway.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time

from glidein_client.wire.units import parse_duration_s
from glidein_server.commands.common import emit, open_state_store, state_dir
from glidein_server.store.monitoring import Monitoring


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "top", parents=[common], help="jobs, cores in use, pilots and sites at a glance, refreshed (Ctrl-C stops)"
    )
    p.add_argument("--interval", default="2s", help="refresh this often (default 2s)")
    p.add_argument("--once", action="store_true", help="print one screen and stop")
    p.set_defaults(handler=cmd_top)
    once = sub.add_parser(
        "summary", parents=[common], help="jobs, cores in use, pilots and sites now: one screen of `top`"
    )
    once.set_defaults(handler=cmd_top, once=True, interval="2s")


def top_text(snap: Monitoring, now: float, dead_after_s: float) -> str:
    """The overview as plain text: jobs by state, cores in use by site and dataset, pilots, sites."""
    states: dict[str, int] = {}
    for _, state, _, n in snap.jobs:
        states[state] = states.get(state, 0) + n
    order = ["idle", "claimed", "running", "done", "failed", "cancelled"]
    jobs = "  ".join(f"{s} {states[s]}" for s in [*order, *sorted(set(states) - set(order))] if states.get(s))
    lines = [time.strftime("glidein  %Y-%m-%d %H:%M:%S", time.localtime(now)), f"jobs     {jobs or 'none'}", ""]
    by_dataset: dict[str, int] = {}
    for _, dataset, _, _, cores in snap.running:
        by_dataset[dataset or "-"] = by_dataset.get(dataset or "-", 0) + cores
    if by_dataset:
        top = sorted(by_dataset.items(), key=lambda kv: -kv[1])[:8]
        lines.append("cores in use by dataset  " + "  ".join(f"{d} {c}" for d, c in top))
        lines.append("")
    pilots: dict[str, list[int]] = {}
    for p in snap.pilots:
        row = pilots.setdefault(p.site, [0, 0, 0, 0])  # running, pending, allocated, free
        if p.state == "running":
            row[0] += p.pilots
            row[2] += p.cores
            row[3] += p.cores_free
        else:
            row[1] += p.pilots
    in_use: dict[str, int] = {}
    for site, _, _, _, cores in snap.running:
        in_use[site] = in_use.get(site, 0) + cores
    header = f"{'site':<16} {'pilots':>6} {'queued':>6} {'cores':>6} {'in use':>6} {'health':>6} {'wanted':>6}  client"
    lines.append(header)
    for s in snap.sites:
        running, pending, allocated, _ = pilots.get(s.name, [0, 0, 0, 0])
        if s.last_seen is None:
            seen = "never seen"
        else:
            seen = f"{now - s.last_seen:.0f} s ago" + (" DOWN" if now - s.last_seen > dead_after_s else "")
        backoff = f" (back-off {s.backoff_s:.0f} s)" if s.backoff_s else ""
        lines.append(
            f"{s.name:<16} {running:>6} {pending:>6} {allocated:>6} {in_use.get(s.name, 0):>6} "
            f"{s.health:>6.2f} {s.demand_pilots:>6}  {seen}{backoff}"
        )
    return "\n".join(lines)


async def cmd_top(args: argparse.Namespace) -> int:
    interval_s = parse_duration_s(args.interval, field="--interval")
    state = state_dir(args)
    settings = state.load()
    async with open_state_store(state, settings) as store:
        while True:
            now = time.time()
            snap = await store.monitoring(now, settings.dataset_label, now - settings.pilot_timeout_s)
            if args.json:
                emit(True, dataclasses.asdict(snap))
            else:
                clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() and not args.once else ""
                print(clear + top_text(snap, now, settings.client_dead_after_s), flush=True)
            if args.once or args.json:
                return 0
            await asyncio.sleep(interval_s)
