"""A job's inputs: fetched once into the pilot's cache, then copied into each sandbox and checked.

An input named by its sha256 is fetched into ``<workdir>/cache`` (mode 0700) once per pilot.
Each job gets its own copy, never a hard link: a job that writes to its input changes only its
own copy. Where the filesystem can, the copy is a reflink (``FICLONE``: shared blocks, copied on
write). Every copy is hashed as it is made, and a copy whose sha256 differs from the name is
refused: the cached file is fetched again, and if that fails too the attempt fails.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from glidein_client.wire.errors import GlideinError
from glidein_client.wire.schema import InputFile

log = logging.getLogger(__name__)

FICLONE = 0x40049409  # ioctl: make dest share src's blocks (btrfs, XFS, bcachefs)
CHUNK = 1 << 20
_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
_WRITE = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW

Fetch = Callable[[InputFile, Path], Awaitable[None]]


class InputDamaged(GlideinError):
    """An input's content does not match its sha256."""


def copy_checked(src: Path, dest: Path) -> str:
    """Copy ``src`` to a new file ``dest`` (a reflink where possible); returns the copy's sha256."""
    digest = hashlib.sha256()
    fin = os.open(src, _READ)
    try:
        fout = os.open(dest, _WRITE, 0o600)
        try:
            try:
                fcntl.ioctl(fout, FICLONE, fin)
            except OSError:
                while chunk := os.read(fin, CHUNK):
                    digest.update(chunk)
                    os.write(fout, chunk)  # a short write only happens on a full disk, which raises
            else:
                offset = 0
                while chunk := os.pread(fout, CHUNK, offset):
                    digest.update(chunk)
                    offset += len(chunk)
        finally:
            os.close(fout)
    finally:
        os.close(fin)
    return digest.hexdigest()


class InputCache:
    """``await cache.place(inp, dest, fetch)``: ``inp`` (which names a sha256) copied to ``dest``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}

    async def place(self, inp: InputFile, dest: Path, fetch: Fetch) -> None:
        assert inp.sha256 is not None
        cached = self.root / inp.sha256
        async with self._locks.setdefault(inp.sha256, asyncio.Lock()):
            for fresh in (False, True):
                if fresh or not cached.exists():
                    await self._fetch(inp, cached, fetch)
                got = await asyncio.to_thread(copy_checked, cached, dest)
                if got == inp.sha256:
                    return
                log.warning(
                    "the cached copy of input %r does not match its sha256 (%s…, expected %s…); fetching it again",
                    inp.name,
                    got[:12],
                    inp.sha256[:12],
                )
                _remove(dest)
        raise InputDamaged(
            f"The input {inp.name!r} does not match its sha256 {inp.sha256}, even when fetched again.",
            hint="Upload the file again; the attempt failed before its job began.",
        )

    async def _fetch(self, inp: InputFile, cached: Path, fetch: Fetch) -> None:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        partial = cached.with_name(cached.name + ".part")
        _remove(cached)
        _remove(partial)
        await fetch(inp, partial)
        os.chmod(partial, 0o400)
        os.replace(partial, cached)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
