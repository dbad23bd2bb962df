"""Processes a job left behind, found and ended with the job, however they detached.

The pilot is a child subreaper (``hardening.become_subreaper``): a process whose parent dies is
re-parented to the pilot, not to init, even after a double fork into a session of its own. Every
job starts in a session of its own, while the pilot's own helpers stay in the pilot's session;
so a child of the pilot outside its session that is no job's main process is a leftover. It is
the job's whose session it is still in, else the job its environment names
(``GLIDEIN_ATTEMPT_ID``); one that hides both is ended with the next job that ends. Leftovers
are ended when their job is killed and when its main process ends; the pilot ends any that
remain when it leaves, and collects their exit statuses so none lingers as a zombie.

Under ``bwrap`` no process can get here: each job is a PID namespace that ends with its init.
A cgroup of its own per job would also do; the pilot does not create cgroups yet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from glidein_client.pilot.hardening import is_subreaper
from glidein_client.pilot.proctree import Orphan, orphans, reap

log = logging.getLogger(__name__)

_MAINS: dict[int, int] = {}  # main pid -> attempt id, for every job whose main process has not been reaped


def started(pid: int, attempt_id: int) -> None:
    _MAINS[pid] = attempt_id


def ended(pid: int) -> None:
    _MAINS.pop(pid, None)


def _owner(orphan: Orphan) -> int | None:
    """The attempt whose job left ``orphan`` behind, when that job still runs."""
    if orphan.session in _MAINS:
        return _MAINS[orphan.session]
    if orphan.attempt is not None and orphan.attempt in _MAINS.values():
        return orphan.attempt
    return None


def end(attempt_id: int, sig: signal.Signals, *, job_ended: bool) -> int:
    """Send ``sig`` to the leftovers of ``attempt_id`` (and, once its job has ended, to those no
    running job owns); collect the ones that have ended. Returns how many were signalled."""
    if not is_subreaper():
        return 0
    count = 0
    for orphan in orphans(set(_MAINS)):
        if orphan.zombie:
            reap(orphan.pid)
            continue
        owner = _owner(orphan)
        if owner == attempt_id or (owner is None and job_ended):
            _signal(orphan.pid, sig)
            count += 1
    if count:
        log.info("ended %d processes that attempt %d left behind (%s)", count, attempt_id, sig.name)
    return count


def end_all() -> int:
    """Kill and collect every leftover: the pilot is leaving."""
    if not is_subreaper():
        return 0
    found = [o for o in orphans(set(_MAINS))]
    for orphan in found:
        if not orphan.zombie:
            _signal(orphan.pid, signal.SIGKILL)
    return len(found)


def _signal(pid: int, sig: signal.Signals) -> None:
    """Signal a child of this process (its pid cannot be reused before it is collected)."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return
    if sig is signal.SIGKILL:
        _collect_when_gone(pid)


def _collect_when_gone(pid: int) -> None:
    try:
        loop = asyncio.get_running_loop()
        fd = os.pidfd_open(pid)
    except (RuntimeError, OSError):
        return  # collected by the next sweep

    def collect() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        reap(pid)

    loop.add_reader(fd, collect)
