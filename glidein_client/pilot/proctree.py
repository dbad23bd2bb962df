"""A job's process tree: every descendant of its main process, and their summed memory."""

from __future__ import annotations

import functools
import os

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
