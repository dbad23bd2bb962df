"""What the pilot process does for itself before it runs anyone's job.

Jobs are someone else's code, run as the pilot's own Unix user. So the pilot

- creates every file and directory readable by its user only (umask 077);
- reads its token once and removes the file, so no job finds it on disk (the command line
  names only the path, which is then empty);
- marks itself non-dumpable: a process of the same user can then neither read its memory,
  environment or open files under ``/proc`` nor attach a debugger to it (``PR_SET_DUMPABLE``);
- becomes a child subreaper (``PR_SET_CHILD_SUBREAPER``): a process a job leaves behind, even one
  that double-forked into a session of its own, is re-parented to the pilot rather than to
  init, so the pilot can find it and end it with its job.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

from glidein_client.wire.errors import ConfigError
from glidein_client.wire.secrets import read_secret_file

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
UMASK = 0o077


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _prctl(option: int, value: int) -> int:
    libc = _libc()
    result = int(libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def non_dumpable() -> None:
    """Same-user processes (the jobs) may no longer read this process's memory or attach to it."""
    _prctl(PR_SET_DUMPABLE, 0)


def is_dumpable() -> bool:
    return _prctl(PR_GET_DUMPABLE, 0) == 1


def is_subreaper() -> bool:
    value = ctypes.c_int(0)
    return int(_libc().prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0)) == 0 and value.value != 0


def become_subreaper() -> bool:
    """Orphans of this process's descendants become its children; False where the kernel refuses."""
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError as exc:
        log.warning("cannot become a child subreaper (%s): a job's escaped processes are found less surely", exc)
        return False
    return True


def harden() -> None:
    """umask 077, non-dumpable, subreaper: called first thing by ``glidein-pilot run``."""
    os.umask(UMASK)
    non_dumpable()
    if become_subreaper():
        why = cgroup_v2_unusable()
        where = "a cgroup v2 of its own could be made per job, but is not yet" if why is None else why
        log.info("processes a job leaves behind are found as the pilot's subreaped children (%s)", where)


def take_token(path: str) -> str:
    """The token in ``path``, which is then removed: jobs must not find it on disk."""
    token = read_secret_file(path, what="pilot token")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(
            f"The pilot read its token from {path} but cannot remove it ({exc.strerror}); "
            "left there, the jobs it runs could read it.",
            hint="Give the pilot a token file in a directory its user may write (the site client does so).",
        ) from None
    return token


def cgroup_v2_unusable(proc_self_cgroup: str | None = None, root: str = "/sys/fs/cgroup") -> str | None:
    """Why this pilot could not give each job a cgroup v2 of its own, or None when it could.

    It could when its own cgroup is in a unified (v2) hierarchy, its user may create a child
    there, and the memory controller is available to children.
    """
    if proc_self_cgroup is None:
        try:
            with open("/proc/self/cgroup") as f:
                proc_self_cgroup = f.read()
        except OSError as exc:
            return f"/proc/self/cgroup cannot be read ({exc.strerror})"
    unified = [line[3:] for line in proc_self_cgroup.splitlines() if line.startswith("0::")]
    if not unified or not os.path.exists(os.path.join(root, "cgroup.controllers")):
        return "this node has no cgroup v2 (unified) hierarchy"
    own = os.path.join(root, unified[0].lstrip("/"))
    if not os.access(own, os.W_OK):
        return f"the pilot's cgroup {own} was not delegated to its user"
    try:
        with open(os.path.join(own, "cgroup.controllers")) as f:
            controllers = f.read().split()
    except OSError as exc:
        return f"{own}/cgroup.controllers cannot be read ({exc.strerror})"
    if "memory" not in controllers:
        return f"the memory controller is not enabled for {own}"
    return None
