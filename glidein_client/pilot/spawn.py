"""Start one job process: in its sandbox, in a session of its own, pinned to its cores.

Spawning is the hot path of a pilot full of short jobs. ``os.posix_spawn`` (a vfork-like clone
in the C library, the environment encoded in C) costs about half what ``subprocess.Popen``
spends in Python per process. The child inherits what the calling thread has at that moment:
its CPU mask, set to the job's cores just before, and the working directory, switched to the
sandbox just before and back just after. Nothing may await in between, and the pilot uses only
absolute paths, so no other code sees either change.

Only descriptors 0-2 reach the job: the first spawn marks every descriptor this process was
given close-on-exec (a batch system may leave some open), every descriptor Python opens is
close-on-exec by default, and the job's logs are handed over with ``dup2``.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: (command, PATH) -> the absolute path found for it; a stale entry is dropped when it fails.
_FOUND: dict[tuple[str, str], str] = {}


def spawn(
    argv: list[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    stdin: int,
    stdout: int,
    stderr: int,
    cores: frozenset[int] = frozenset(),
) -> int:
    """Start ``argv`` and return its pid; raises OSError (``filename`` says what was missing) or
    ValueError (a NUL character) when it cannot start."""
    _seal_inherited()
    actions = [(os.POSIX_SPAWN_DUP2, _above_stdio(fd), target) for target, fd in enumerate((stdin, stdout, stderr))]
    previous = _pin(cores)
    here = os.open(".", os.O_PATH | os.O_CLOEXEC)
    try:
        os.chdir(cwd)
        try:
            return _spawn_found(argv, env, actions)
        finally:
            os.fchdir(here)
    finally:
        os.close(here)
        for action in actions:
            if action[1] not in (stdin, stdout, stderr):
                os.close(action[1])
        if previous is not None:
            _unpin(previous)


def _spawn_found(argv: list[str], env: Mapping[str, str], actions: list[tuple[int, int, int]]) -> int:
    name = argv[0]
    if "/" in name:
        return os.posix_spawn(name, argv, env, file_actions=actions, setsid=True)
    search = env.get("PATH", os.defpath)
    cached = _FOUND.get((name, search))
    if cached is not None:
        try:
            return os.posix_spawn(cached, argv, env, file_actions=actions, setsid=True)
        except (FileNotFoundError, PermissionError):
            del _FOUND[(name, search)]  # moved or changed since: look again
    path = _which(name, search)
    pid = os.posix_spawn(path, argv, env, file_actions=actions, setsid=True)
    if os.path.isabs(path):
        _FOUND[(name, search)] = path
    return pid


def _which(name: str, search: str) -> str:
    """The first executable ``name`` on ``search`` (relative entries from the sandbox), as exec would."""
    denied = False
    for folder in search.split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            denied = True
    if denied:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


@functools.cache
def _seal_inherited() -> None:
    """Mark every descriptor above 2 close-on-exec, once: whatever this process inherited stays here."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, closed by now


def _above_stdio(fd: int) -> int:
    """``fd`` itself, or a copy numbered 3 or more: ``dup2`` onto its own number would keep close-on-exec."""
    return fd if fd > 2 else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


def _pin(cores: frozenset[int]) -> set[int] | None:
    if not cores:
        return None
    previous = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cores)
    except OSError as exc:
        log.warning("could not pin the job to cores %s (%s)", sorted(cores), exc)
        return None
    return previous


def _unpin(previous: set[int]) -> None:
    try:
        os.sched_setaffinity(0, previous)
    except OSError as exc:
        log.warning("could not restore the pilot's CPU mask %s (%s)", sorted(previous), exc)
