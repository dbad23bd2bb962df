"""Job sandboxes under a pilot's work directory: made, recycled, and removed off the event loop.

A pilot full of short jobs makes and removes a directory per job, and on a journaled filesystem
``mkdir`` and ``rmdir`` cost about as much as spawning the job. So a sandbox that its job left
holding nothing but its two logs (plain files, not links) is kept, and the next job gets it by
one ``rename``; its logs are truncated when that job opens them. Every other sandbox is removed
by a janitor thread, so removal never holds up the event loop.

Jobs of one pilot run as one user, so a recycled directory gives a job nothing it could not
reach anyway. A job that made its directory or logs unwritable makes the next job's start fail
(interrupted, not that job's fault, so it runs again elsewhere); that sandbox is then removed.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import threading
from pathlib import Path

from glidein_client.pilot.launch import STDERR_NAME, STDOUT_NAME

LOG_NAMES = frozenset({STDOUT_NAME, STDERR_NAME})


class Sandboxes:
    """``async with Sandboxes(root, keep=slots) as boxes``: ``make(name)``, then ``release(path)``."""

    def __init__(self, root: Path, *, keep: int) -> None:
        self.root = root.absolute()
        self._keep = keep
        self._spare: list[Path] = []
        self._doomed: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._janitor: threading.Thread | None = None

    async def __aenter__(self) -> Sandboxes:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)  # sandboxes are for the pilot's user only, whatever the umask
        self._janitor = threading.Thread(target=self._sweep, name="sandbox-janitor", daemon=True)
        self._janitor.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._janitor is not None:
            self._doomed.put(None)
            await asyncio.to_thread(self._janitor.join)
            self._janitor = None
        await asyncio.to_thread(shutil.rmtree, self.root, True)

    def make(self, name: str) -> Path:
        """A new, empty sandbox (but for logs about to be truncated) named ``name`` under the root."""
        path = self.root / name
        while self._spare:
            spare = self._spare.pop()
            try:
                os.rename(spare, path)
                return path
            except OSError:
                self._doomed.put(spare)
        path.mkdir(mode=0o700)
        return path

    def release(self, path: Path, *, reuse: bool = True) -> None:
        """The job of ``path`` has ended and its outputs are uploaded: keep it for the next job, or remove it.
        ``reuse=False`` for a job that did not start: whatever stopped it may be in the directory."""
        if reuse and len(self._spare) < self._keep and self._reusable(path):
            self._spare.append(path)
        else:
            self._doomed.put(path)

    @staticmethod
    def _reusable(path: Path) -> bool:
        """Nothing in it but the two logs, as plain files (no symlinks: the next job truncates them)."""
        try:
            with os.scandir(path) as entries:
                return all(e.name in LOG_NAMES and e.is_file(follow_symlinks=False) for e in entries)
        except OSError:
            return False

    def _sweep(self) -> None:
        """Remove sandboxes in the order they were given up: three calls for one that holds only its
        two logs, a tree walk for anything bigger."""
        while (path := self._doomed.get()) is not None:
            try:
                os.unlink(path / STDOUT_NAME)
                os.unlink(path / STDERR_NAME)
                os.rmdir(path)
            except OSError:
                shutil.rmtree(path, ignore_errors=True)
