"""The /etc a bubblewrap job sees: one read-only copy of the few /etc entries programs need.

Bound one by one, each entry costs bubblewrap a bind, a read of the (growing) mount table and a
read-only remount for every job: some 15 ms per job for the two dozen entries on a busy node,
much of what bwrap adds to a short job. So the pilot copies them once into a directory of its
own (0700) and gives each job that one directory, read-only, as its /etc.

What is copied is what a bind would show, less any secret: each entry as its bind would show it
(a top-level link such as ``/etc/resolv.conf -> /run/...`` is followed; links inside a directory,
such as the certificates' links into ``/usr/share``, are kept as links), and only what every
user of the node may read (a key kept below ``/etc/ssl/private`` never lands in the copy, where a
bind would have shown it to the job of a pilot run as root). Sockets, pipes and devices are left out.

The copy follows changes: at most every ``CHECK_S``, a starting job compares the entries' change
times with those the copy was made from; when one changed, a new copy serves the jobs that start
from then on. Older copies stay until the pilot ends, since running jobs still see theirs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import stat
import time
from collections.abc import Iterator, Sequence

log = logging.getLogger(__name__)

#: How often (seconds) a starting job checks whether the copied /etc entries changed.
CHECK_S = 10.0
Stamp = tuple[tuple[str, int, int, int], ...]


def _world_readable(st: os.stat_result) -> bool:
    if stat.S_ISDIR(st.st_mode):
        return st.st_mode & 0o005 == 0o005
    return bool(st.st_mode & 0o004)


class EtcView:
    """Copies of ``entries`` of ``root`` under ``base`` (a private directory the caller made)."""

    def __init__(self, entries: Sequence[str], base: str, *, root: str = "/etc") -> None:
        self.entries = tuple(entries)
        self.base = base
        self.root = root
        self._current: str | None = None
        self._stamp: Stamp = ()
        self._checked = -math.inf
        self._copies = 0

    def path(self, mono: float | None = None) -> str:
        """The copy a job starting now gets as its /etc (made again when the entries changed)."""
        mono = time.monotonic() if mono is None else mono
        if self._current is not None and mono - self._checked < CHECK_S:
            return self._current
        self._checked = mono
        stamp = self._stamp_now()
        if self._current is None or stamp != self._stamp:
            if self._current is not None:
                log.info("files of %s changed: jobs starting from now see a fresh copy", self.root)
            self._current, self._stamp = self._copy(), stamp
        return self._current

    def close(self) -> None:
        """Remove every copy (once no job runs any more)."""
        shutil.rmtree(self.base, ignore_errors=True)

    # --- the copy -----------------------------------------------------------------------------

    def _sources(self) -> Iterator[tuple[str, str]]:
        """(name, path) of the entries present, top-level links followed."""
        for name in self.entries:
            path = os.path.join(self.root, name)
            if os.path.exists(path):
                yield name, path

    def _stamp_now(self) -> Stamp:
        out: list[tuple[str, int, int, int]] = []
        for _, path in self._sources():
            for walked in _walk(path):
                with contextlib.suppress(OSError):
                    st = os.lstat(walked) if walked != path else os.stat(walked)
                    out.append((walked, st.st_mtime_ns, st.st_ctime_ns, st.st_size))
        return tuple(out)

    def _copy(self) -> str:
        dest = os.path.join(self.base, f"etc-{self._copies}")
        self._copies += 1
        os.mkdir(dest, 0o755)
        for name, path in self._sources():
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if not _world_readable(st):
                    continue
                if stat.S_ISDIR(st.st_mode):
                    _copy_tree(path, os.path.join(dest, name))
                elif stat.S_ISREG(st.st_mode):
                    shutil.copy2(path, os.path.join(dest, name))
        return dest


def _walk(path: str) -> Iterator[str]:
    """``path`` and, below a directory, every entry (links not followed)."""
    yield path
    if os.path.isdir(path):
        for folder, dirs, files in os.walk(path, onerror=lambda _: None):
            for name in (*dirs, *files):
                yield os.path.join(folder, name)


def _copy_tree(src: str, dest: str) -> None:
    """What every user may read of the tree ``src``, links kept as links."""
    os.mkdir(dest, 0o755)
    with os.scandir(src) as entries:
        for entry in entries:
            target = os.path.join(dest, entry.name)
            with contextlib.suppress(OSError):  # unreadable, or gone meanwhile: left out
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), target)
                    continue
                st = entry.stat(follow_symlinks=False)
                if not _world_readable(st):
                    continue
                if stat.S_ISDIR(st.st_mode):
                    _copy_tree(entry.path, target)
                elif stat.S_ISREG(st.st_mode):
                    shutil.copy2(entry.path, target, follow_symlinks=False)
