"""Pilots that left idle without ever claiming a job, read from their own last log line.

A pilot ends its log with ``pilot N leaving: <why> (ran <n> jobs, ...)``. The client reads the tail
of each ended pilot's output once (through its runner, so over SSH too) and keeps whether it left
idle having run nothing; the streak of such pilots, newest first, feeds
:func:`glidein_client.site.decisions.decide`. When each idle pilot was first seen ended is kept in a
small state file (next to the client's lock), so a client run from cron backs off like the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
from collections.abc import Sequence
from pathlib import Path

from glidein_client.site.config import SiteConfig
from glidein_client.site.pilot_failures import OUTPUT_FILES, TAIL_BYTES
from glidein_client.site.runners.local import Runner
from glidein_client.site.schedulers.base import PilotJob, PilotState

_LEAVING = re.compile(r"pilot \d+ leaving: (?P<why>.*) \(ran (?P<jobs>\d+) jobs")
#: Ended pilots read per cycle at most (the newest first).
READ_PER_CYCLE = 10
#: Idle pilots remembered in the state file (the newest).
KEEP = 50


def left_idle(output: str) -> bool | None:
    """True when the pilot's output says it left idle having run no job; None when it does not say."""
    found = None
    for match in _LEAVING.finditer(output):
        found = match
    if found is None:
        return None
    return found.group("why").startswith("idle for") and found.group("jobs") == "0"


class IdleOuts:
    """The streak of pilots that left idle without a job, as far as their outputs tell."""

    def __init__(self, state: Path | None = None) -> None:
        self.state = state
        self._idle: dict[int, bool] = {}  # pilot id -> left idle without a job (read once)
        self._seen_at: dict[int, float] = self._load()  # when an idle one was first seen ended

    async def update(self, runner: Runner, site: SiteConfig, pilots: Sequence[PilotJob], now: float) -> None:
        ended = [p.pilot_id for p in pilots if p.pilot_id > 0 and p.state is PilotState.DONE]
        changed = False
        for pilot_id in sorted((i for i in ended if i not in self._idle), reverse=True)[:READ_PER_CYCLE]:
            idle = await _read(runner, site, pilot_id)
            self._idle[pilot_id] = bool(idle)
            if idle and pilot_id not in self._seen_at:
                self._seen_at[pilot_id] = now
                changed = True
        if changed:
            self._save()

    def streak(self) -> int:
        count = 0
        for pilot_id in sorted(self._idle, reverse=True):
            if not self._idle[pilot_id]:
                break
            count += 1
        return count

    def age_s(self, now: float) -> float:
        """Seconds since the newest idle pilot was seen ended (infinite when none)."""
        idle = [pid for pid, was in self._idle.items() if was]
        return now - self._seen_at.get(max(idle), now) if idle else float("inf")

    def _load(self) -> dict[int, float]:
        if self.state is None:
            return {}
        try:
            data = json.loads(self.state.read_text())
            return {int(k): float(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _save(self) -> None:
        if self.state is None:
            return
        newest = dict(sorted(self._seen_at.items())[-KEEP:])
        with contextlib.suppress(OSError):
            self.state.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.state.with_name(self.state.name + ".tmp")
            tmp.write_text(json.dumps(newest))
            os.replace(tmp, self.state)


async def _read(runner: Runner, site: SiteConfig, pilot_id: int) -> bool | None:
    workdir = posixpath.join(site.site.scratch_dir, "pilots-meta", f"glidein-{site.name}-{pilot_id}")
    for filename in OUTPUT_FILES:
        try:
            data = await runner.read_file(posixpath.join(workdir, filename))
        except OSError:
            continue
        found = left_idle(data[-TAIL_BYTES:].decode(errors="replace"))
        if found is not None:
            return found
    return None
