"""The Runner seam: run a command and move files on the submit host (login node).

The local runner uses subprocesses; a remote runner (SSH) implements the same Protocol,
so every scheduler backend works unchanged wherever the login node is.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from glidein_client.wire.errors import SchedulerError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self, what: str, hint: str | None = None) -> CommandResult:
        """Raise a :class:`SchedulerError` carrying the command, exit code and stderr on failure."""
        if self.returncode != 0:
            detail = (self.stderr.strip() or self.stdout.strip()).splitlines()
            first = detail[-1] if detail else f"exit code {self.returncode}"
            raise SchedulerError(
                f"{what} failed: {first}",
                hint=hint,
                command=list(self.argv),
                exit_code=self.returncode,
                stderr=self.stderr,
            )
        return self


class Runner(Protocol):
    async def run(
        self,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> CommandResult: ...

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None: ...

    async def read_file(self, path: str) -> bytes: ...

    async def makedirs(self, path: str, *, mode: int = 0o700) -> None: ...


class LocalRunner:
    """Runs commands as subprocesses of this process, on this host."""

    async def run(
        self,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> CommandResult:
        full_env = {**os.environ, **env} if env else None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=full_env,
            )
        except FileNotFoundError:
            raise SchedulerError(
                f"The command {argv[0]!r} was not found on this host.",
                hint="Install it or put its directory on PATH.",
                command=argv,
            ) from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise SchedulerError(
                f"The command {argv[0]!r} did not answer within {timeout_s:.0f} s.",
                hint="The batch system may be overloaded; the next cycle will try again.",
                command=argv,
            ) from None
        result = CommandResult(
            tuple(argv), proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
        )
        log.debug("ran %s -> %d", argv[0], result.returncode)
        return result

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        await asyncio.to_thread(_write_atomic, Path(path), data, mode)

    async def read_file(self, path: str) -> bytes:
        return await asyncio.to_thread(Path(path).read_bytes)

    async def makedirs(self, path: str, *, mode: int = 0o700) -> None:
        await asyncio.to_thread(os.makedirs, path, mode, True)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
