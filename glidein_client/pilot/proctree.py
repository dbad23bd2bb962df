"""A job's process tree: every descendant of its main process, their summed memory, and the
processes a job left behind."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import psutil

_MB = 1024 * 1024
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@functools.cache
def _proc_children_supported() -> bool:
    return os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def descendant_pids(pid: int) -> list[int]:
    """Pids of every descendant of ``pid`` (children first); processes that vanish are skipped.

    Walks ``/proc/PID/task/TID/children``, which costs time in proportion to the job's own tree,
    not to every process on the node as a scan of all parents does; falls back to psutil where
    the kernel lacks that file.
    """
    if not _proc_children_supported():
        try:
            return [child.pid for child in psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            return []
    found: list[int] = []
    seen = {pid}
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                    children = f.read().split()
            except OSError:
                continue
            for raw in children:
                child = int(raw)
                if child not in seen:
                    seen.add(child)
                    found.append(child)
                    stack.append(child)
    return found


def tree_rss_mb(pid: int) -> float:
    """Summed resident memory of ``pid`` and its descendants, in MB (0 for vanished processes)."""
    pages = 0
    for member in (pid, *descendant_pids(pid)):
        try:
            with open(f"/proc/{member}/statm", "rb") as f:
                pages += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return pages * _PAGE_BYTES / _MB


# --- processes a job left behind ---------------------------------------------------------------
#
# The pilot is a child subreaper (hardening.py): a process whose parent dies is re-parented to
# the pilot, however it detached itself (double fork, setsid). Its own helpers (squeue,
# nvidia-smi) stay in the pilot's session; every job starts in a session of its own. So a
# child of the pilot outside the pilot's session that is not a job's main process was left
# behind by a job. Which job: the session it still is in, else the GLIDEIN_ATTEMPT_ID in its
# environment; one that hides both is ended with the next job that ends.


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw[raw.rfind(b")") + 2 :].decode().split()


def own_children() -> list[int]:
    me = os.getpid()
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{me}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{me}/task/{tid}/children", "rb") as f:
                found.extend(int(raw) for raw in f.read().split())
        except OSError:
            continue
    return found


def attempt_marker(pid: int) -> int | None:
    """The GLIDEIN_ATTEMPT_ID in a process's environment, if it can be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"GLIDEIN_ATTEMPT_ID="):
            value = item.split(b"=", 1)[1]
            return int(value) if value.isdigit() else None
    return None


@dataclass(frozen=True)
class Orphan:
    pid: int
    zombie: bool
    session: int
    attempt: int | None  # from its environment


def orphans(mains: set[int]) -> list[Orphan]:
    """Children of this process that jobs left behind (see above); ``mains`` are the jobs' main pids."""
    own_session = os.getsid(0)
    out = []
    for pid in own_children():
        if pid in mains:
            continue
        fields = _stat_fields(pid)
        if fields is None or len(fields) < 4:
            continue
        session = int(fields[3])
        if session == own_session:
            continue
        zombie = fields[0] in ("Z", "X")
        out.append(Orphan(pid, zombie, session, None if zombie else attempt_marker(pid)))
    return out


def reap(pid: int) -> bool:
    """Collect an ended child's status; False while it still runs."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done != 0


def own_peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MB.

    A job started by ``posix_spawn`` (a vfork) shares the pilot's memory until it execs, and the
    kernel counts that memory's peak into the job's own: a job's ``ru_maxrss`` up to this value
    says nothing about the job.
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0
