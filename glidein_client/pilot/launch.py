"""What a job is started with: its command line, its environment and the files in its sandbox.

The script (``SCRIPT_NAME``) and the two logs live in the job's sandbox; the pilot reads the
last ``LOG_TAIL_BYTES`` of each log when the job ends.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from glidein_client.wire.schema import LOG_TAIL_BYTES, JobSpec

STDOUT_NAME = ".glidein-stdout"
STDERR_NAME = ".glidein-stderr"
SCRIPT_NAME = ".glidein-job.sh"
_LOG_FLAGS = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


@dataclass(frozen=True)
class JobRun:
    attempt_id: int
    job_id: int
    spec: JobSpec
    sandbox: Path  # exists already, inputs placed by the caller
    cores: frozenset[int]  # physical cores to pin to; empty means not pinned
    gpus: tuple[str, ...]


def job_argv(run: JobRun) -> list[str]:
    """The command line of a job; a script is run from ``SCRIPT_NAME`` in its sandbox.

    A script is started through the interpreter its ``#!`` line names (as the kernel would, but
    also from scratch filesystems mounted ``noexec``), else through ``/bin/sh``.
    """
    spec = run.spec
    if spec.script is None:
        return list(spec.argv or [])
    path = os.path.join(run.sandbox, SCRIPT_NAME)
    if spec.script.startswith("#!"):
        interpreter, _, argument = spec.script[2:].partition("\n")[0].strip().partition(" ")
        if interpreter:
            return [interpreter, *([argument.strip()] if argument.strip() else []), path]
    return ["/bin/sh", path]


def job_env(run: JobRun, base_env: Mapping[str, str]) -> dict[str, str]:
    """The job's environment: the pilot's, without its tokens, plus the job's and glidein's own."""
    spec = run.spec
    env = {k: v for k, v in base_env.items() if not k.startswith("GLIDEIN_TOKEN")}
    env["OMP_NUM_THREADS"] = str(spec.cpus)
    env.update(spec.env)
    env["GLIDEIN_JOB_ID"] = str(run.job_id)
    env["GLIDEIN_ATTEMPT_ID"] = str(run.attempt_id)
    env["GLIDEIN_CPUS"] = str(spec.cpus)
    env["GLIDEIN_MEMORY_MB"] = str(spec.memory_mb)
    env["GLIDEIN_SANDBOX"] = os.fspath(run.sandbox)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(run.gpus)
    return env


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_reason(returncode: int) -> str | None:
    if returncode == 0:
        return None
    if returncode < 0:
        return f"killed by signal {signal_name(-returncode)}"
    return f"exited with code {returncode}"


def read_tail(path: str | Path, size: int = LOG_TAIL_BYTES) -> str:
    """The last ``size`` bytes of a file as text; a character cut in half at the start is dropped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return fd_tail(fd, size)
    finally:
        os.close(fd)


def fd_tail(fd: int, size: int = LOG_TAIL_BYTES) -> str:
    """Like :func:`read_tail`, from a file open for reading; an empty file costs one ``fstat``."""
    try:
        length = os.fstat(fd).st_size
        if length == 0:
            return ""
        data = os.pread(fd, size, max(0, length - size))
    except OSError:
        return ""
    if length > size:
        cut = 0
        while cut < min(3, len(data)) and 0x80 <= data[cut] < 0xC0:
            cut += 1
        data = data[cut:]
    return data.decode("utf-8", errors="replace")


@functools.cache
def devnull() -> int:
    """One descriptor on /dev/null for every job's stdin, rather than an open per job."""
    return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)


def open_logs(sandbox: str) -> tuple[int, int]:
    out = os.open(os.path.join(sandbox, STDOUT_NAME), _LOG_FLAGS, 0o644)
    try:
        return out, os.open(os.path.join(sandbox, STDERR_NAME), _LOG_FLAGS, 0o644)
    except OSError:
        os.close(out)
        raise


def close_fds(fds: tuple[int, int] | None) -> None:
    for fd in fds or ():
        try:
            os.close(fd)
        except OSError:
            pass


def write_script(path: str, text: str) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o700), "wb") as f:
        os.fchmod(f.fileno(), 0o700)
        f.write(text.encode())
