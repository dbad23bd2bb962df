"""`glidein-client drain | resume | stop-pilots`: the site admin's hand on this site's pilots.

- drain: a marker file (next to the client's lock) makes every cycle submit nothing and remove
  waiting pilots; each running pilot finds a ``drain`` file in its directory and takes no more
  jobs, lets its running jobs finish and leaves.
- resume: removes the marker.
- stop-pilots: cancels every pilot of the site the batch system lists, queued or running, each
  named; their jobs go back to the queue without using a retry.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from pathlib import Path

from glidein_client.site.config import SiteConfig
from glidein_client.site.lock import lock_dir
from glidein_client.site.runners.local import Runner
from glidein_client.site.schedulers.base import PilotJob, Scheduler
from glidein_client.wire.errors import SchedulerError

#: The file `glidein-client drain` writes into each pilot's directory (the pilot's --drain-file).
DRAIN_FILE = "drain"


def state_file(kind: str, site: str, config: str, directory: Path | None = None) -> Path:
    """A small state file of the client of ``config``, named like its lock (site and config path)."""
    digest = hashlib.sha256(os.path.abspath(config).encode()).hexdigest()[:12]
    return (directory or lock_dir()) / f"{kind}-{site}-{digest}"


def drain_marker(site: str, config: str, directory: Path | None = None) -> Path:
    """The marker of a draining site."""
    return state_file("drain", site, config, directory)


def is_draining(site: str, config: str) -> bool:
    return drain_marker(site, config).exists()


def set_draining(site: str, config: str, on: bool) -> bool:
    """Set or clear the marker; returns whether it changed anything."""
    marker = drain_marker(site, config)
    if not on:
        if not marker.exists():
            return False
        marker.unlink()
        return True
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    marker.write_text("drain\n")
    return True


def pilot_name(site: SiteConfig, scheduler: Scheduler, pilot: PilotJob) -> str:
    return f"glidein-{site.name}-{pilot.pilot_id} ({scheduler.name} {pilot.batch_id}, {pilot.state.value})"


async def tell_pilots_to_drain(site: SiteConfig, runner: Runner, pilots: list[PilotJob]) -> list[PilotJob]:
    """Write the drain file into each pilot's directory; the pilots that could not be told are returned."""
    failed: list[PilotJob] = []
    for pilot in pilots:
        workdir = posixpath.join(site.site.scratch_dir, "pilots-meta", f"glidein-{site.name}-{pilot.pilot_id}")
        try:
            await runner.write_file(posixpath.join(workdir, DRAIN_FILE), b"drain\n", mode=0o644)
        except OSError:
            failed.append(pilot)
    return failed


async def stop_pilots(scheduler: Scheduler) -> tuple[list[PilotJob], SchedulerError | None]:
    """Cancel every active pilot of the site; returns them and the cancel's error, if any."""
    pilots = [p for p in await scheduler.status() if p.state.active]
    if not pilots:
        return [], None
    try:
        await scheduler.cancel([p.batch_id for p in pilots])
    except SchedulerError as exc:
        return pilots, exc
    return pilots, None
