"""Directories on a shared filesystem that only this Unix user may change.

The mailbox, its boxes and the staging area carry pilot tokens, job specs (with their
secrets) and users' files. Another local user who could make one of them first, or write
into one, could read those or answer a pilot in the site client's name. So each is created
exclusively with mode 0700 and, when it is already there, used only if it is a real
directory (not a symbolic link) owned by this user that neither group nor others can
write to. Anything else is refused with a message that names the path and the fix.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from glidein_client.wire.errors import ConfigError

UNSAFE_BITS = stat.S_IWGRP | stat.S_IWOTH


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def unsafe_reason(st: os.stat_result, uid: int) -> str | None:
    """Why a directory with this ``lstat`` result is not private to ``uid``; None when it is."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != uid:
        return f"belongs to user {_user(st.st_uid)}, not to {_user(uid)} who runs glidein"
    if st.st_mode & UNSAFE_BITS:
        return f"can be written by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_private(path: Path, what: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` is a directory of this user that only it may change."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise ConfigError(
            f"The {what} {path} does not exist.",
            hint="The site client creates it; check that it runs and that this path is on the shared filesystem.",
        ) from None
    reason = unsafe_reason(st, os.geteuid())
    if reason is None:
        return
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
        hint = f"Run: chmod go-w {path} (glidein makes its directories with mode 0700)."
    else:
        hint = (
            f"It is not used and nothing is sent through it. Remove it (as its owner or root) or choose "
            f"another path for the {what}; glidein creates it itself, with mode 0700."
        )
    raise ConfigError(f"The {what} {path} {reason}.", hint=hint, path=str(path))


def private_dir(path: Path, what: str, *, parents: bool = False) -> Path:
    """Create ``path`` exclusively with mode 0700, or check that the one already there is private.

    With ``parents`` missing parent directories are made too (0700 as well); the existing
    ones are left as they are.
    """
    if parents:
        missing = [p for p in reversed(path.parents) if not os.path.lexists(p)]
        for parent in missing:
            try:
                os.mkdir(parent, 0o700)
            except FileExistsError:
                pass
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # whatever the umask
    except FileExistsError:
        check_private(path, what)
    return path


def owned_by_me(fd: int) -> bool:
    """True when the open file ``fd`` is a regular file of this user."""
    st = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()
