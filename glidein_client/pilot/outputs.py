"""A job's outputs, opened for upload without following any symbolic link.

A job decides what its sandbox holds, so an output may be a link to the pilot's token, to
another sandbox or to any file the pilot's user can read. Each part of the output's path is
opened relative to the one before with ``O_NOFOLLOW``, and only a regular file is accepted; the
upload then reads that open file (``/proc/self/fd/N``), not the name, so nothing can be swapped
in between.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO must not hang us


class OutputRefused(Exception):
    """Why an output cannot be uploaded, in plain words (``str(exc)``)."""


def _open_beneath(sandbox: Path, name: str) -> int:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or name.startswith("/"):
        raise OutputRefused(f"the output name {name!r} is not a path inside the sandbox")
    fd = os.open(sandbox, _DIR)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], _FILE, dir_fd=fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def opened_output(sandbox: Path, name: str) -> Iterator[Path]:
    """The job's output ``name`` as a path to the already opened regular file; OutputRefused if
    it is missing, a symbolic link (or under one), or not a regular file."""
    try:
        fd = _open_beneath(sandbox, name)
    except FileNotFoundError:
        raise OutputRefused(f"the job did not produce {name}") from None
    except OSError as exc:
        if exc.errno in (40, 20):  # ELOOP: a symbolic link; ENOTDIR: a link or file where a directory was
            raise OutputRefused(
                f"the output {name} is a symbolic link (or lies under one); outputs must be regular files"
            ) from None
        raise OutputRefused(f"the output {name} cannot be read: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OutputRefused(f"the output {name} is not a regular file")
        yield Path(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
