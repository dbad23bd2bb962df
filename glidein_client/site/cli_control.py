"""`glidein-client drain | resume | stop-pilots CONFIG` (see :mod:`glidein_client.site.control`)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from glidein_client.site.client import SiteClient
from glidein_client.site.config import load_site_config
from glidein_client.site.control import pilot_name, set_draining, stop_pilots, tell_pilots_to_drain
from glidein_client.site.decisions import REMOVABLE
from glidein_client.site.lock import lock_holder

COMMANDS = (
    ("drain", "submit no more pilots, remove waiting ones; running pilots finish their jobs and leave"),
    ("resume", "end a drain: submit pilots again as the demand asks"),
    ("stop-pilots", "remove this site's pilots from the batch system now, queued and running, naming each"),
)


def _print(args: argparse.Namespace, lines: list[str], data: dict[str, Any]) -> None:
    print(json.dumps(data) if args.json else "\n".join(lines))


async def drain(args: argparse.Namespace) -> int:
    site = await asyncio.to_thread(load_site_config, args.config)
    changed = set_draining(site.name, args.config, True)
    lines = [
        f"site {site.name}: draining{'' if changed else ' (already)'}: no new pilots until "
        f"`glidein-client resume {args.config}`"
    ]
    data: dict[str, Any] = {"site": site.name, "draining": True, "removed": [], "told": [], "not_told": []}
    async with SiteClient(site) as client:
        pilots = [p for p in await client.scheduler.status() if p.state.active]
        waiting = [p for p in pilots if p.state in REMOVABLE]
        if waiting:
            await client.scheduler.cancel([p.batch_id for p in waiting])
        others = [p for p in pilots if p not in waiting]
        if site.site.scheduler == "htcondor" and not site.batch.shared_filesystem:
            # the pilots' directories are on the execute nodes: no file reaches them
            failed = list(others)
        else:
            failed = await tell_pilots_to_drain(site, client.runner, others)
        for p in waiting:
            lines.append(f"removed waiting pilot {pilot_name(site, client.scheduler, p)}")
            data["removed"].append(p.batch_id)
        for p in others:
            if p in failed:
                lines.append(
                    f"could not reach the directory of pilot {pilot_name(site, client.scheduler, p)}: it takes "
                    f"jobs until it is idle; `glidein-client stop-pilots {args.config}` removes it now"
                )
                data["not_told"].append(p.batch_id)
            else:
                lines.append(f"pilot {pilot_name(site, client.scheduler, p)} finishes its jobs, then leaves")
                data["told"].append(p.batch_id)
    if not pilots:
        lines.append("no pilots in the batch system")
    _print(args, lines, data)
    return 0 if not data["not_told"] else 1


async def resume(args: argparse.Namespace) -> int:
    site = await asyncio.to_thread(load_site_config, args.config)
    changed = set_draining(site.name, args.config, False)
    text = "resumed: pilots are submitted again as the demand asks" if changed else "not draining; nothing to do"
    _print(args, [f"site {site.name}: {text}"], {"site": site.name, "draining": False, "changed": changed})
    return 0


async def stop(args: argparse.Namespace) -> int:
    site = await asyncio.to_thread(load_site_config, args.config)
    async with SiteClient(site) as client:
        pilots, error = await stop_pilots(client.scheduler)
        names = [pilot_name(site, client.scheduler, p) for p in pilots]
    verb = "could not remove" if error else "removed"
    lines = [f"{verb} pilot {name}" for name in names] or [f"site {site.name}: no pilots in the batch system"]
    holder = lock_holder(site.name, args.config)
    if holder:
        lines.append(
            f"note: a glidein-client still runs {args.config} ({holder}) and will submit new pilots while jobs "
            f"wait; stop it, or run `glidein-client drain {args.config}`"
        )
    if error is not None:
        lines.append(f"error: {error}")
    _print(
        args,
        lines,
        {
            "site": site.name,
            "removed": [] if error else [p.batch_id for p in pilots],
            "error": str(error) if error else None,
        },
    )
    return 1 if error else 0


HANDLERS = {"drain": drain, "resume": resume, "stop-pilots": stop}
