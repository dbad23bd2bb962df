"""Checks a pilot runs before it takes work: scratch, disk, commands, server.

A pilot that fails them reports why and leaves, instead of failing every job it would claim.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from glidein_client.wire.errors import GlideinError

log = logging.getLogger(__name__)

SERVER_CHECK_TIMEOUT_S = 60.0
_MB = 1024 * 1024


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # what was found; on failure, also what to do


@dataclass(frozen=True)
class SelfTestResult:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)

    @property
    def reason(self) -> str | None:
        """One plain sentence naming each failed check and what to do; ``None`` when all passed."""
        failed = self.failed
        if not failed:
            return None
        return "The pilot self-test failed: " + "; ".join(f"{c.name}: {c.detail}" for c in failed) + "."


def check_scratch(scratch: Path) -> Check:
    """The scratch directory exists or can be made, and a file can be written, synced and removed."""
    probe = scratch / f".glidein-selftest-{os.getpid()}"
    try:
        scratch.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"glidein self-test\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        return Check(
            "scratch",
            False,
            f"cannot write in {scratch} ({exc.strerror or exc}); "
            "point the pilot's scratch at a writable local directory",
        )
    return Check("scratch", True, f"{scratch} is writable")


def check_disk(scratch: Path, min_disk_mb: int) -> Check:
    try:
        free_mb = shutil.disk_usage(scratch).free // _MB
    except OSError as exc:
        return Check("disk", False, f"cannot read the free space of {scratch} ({exc.strerror or exc})")
    if free_mb < min_disk_mb:
        return Check(
            "disk",
            False,
            f"only {free_mb} MB free in {scratch}, {min_disk_mb} MB needed; "
            "free some space or use a scratch directory on a larger filesystem",
        )
    return Check("disk", True, f"{free_mb} MB free in {scratch} (at least {min_disk_mb} MB needed)")


def check_command(name: str) -> Check:
    path = shutil.which(name)
    if path is None:
        return Check(
            f"command {name}",
            False,
            f"{name!r} is not on PATH; install it on the worker nodes or add its directory to PATH",
        )
    return Check(f"command {name}", True, f"found at {path}")


async def check_server(server_check: Callable[[], Awaitable[object]]) -> Check:
    try:
        await asyncio.wait_for(server_check(), SERVER_CHECK_TIMEOUT_S)
    except asyncio.TimeoutError:
        return Check(
            "server",
            False,
            f"no answer within {SERVER_CHECK_TIMEOUT_S:.0f} s; check that worker nodes can reach the server "
            "(or use a relay or mailbox channel)",
        )
    except (GlideinError, OSError) as exc:
        return Check("server", False, f"not reachable: {exc}")
    return Check("server", True, "reachable")


async def self_test(
    scratch: Path,
    *,
    min_disk_mb: int,
    required_commands: Sequence[str] = (),
    server_check: Callable[[], Awaitable[object]] | None = None,
) -> SelfTestResult:
    """Run the checks and collect their results; a failed check does not stop the others."""
    checks = [await asyncio.to_thread(check_scratch, scratch)]
    if checks[0].ok:  # free space of an unusable scratch would say nothing
        checks.append(await asyncio.to_thread(check_disk, scratch, min_disk_mb))
    checks.extend(check_command(name) for name in required_commands)
    if server_check is not None:
        checks.append(await check_server(server_check))
    result = SelfTestResult(tuple(checks))
    for check in checks:
        log.info("self-test %s %s: %s", "passed" if check.ok else "FAILED", check.name, check.detail)
    return result
