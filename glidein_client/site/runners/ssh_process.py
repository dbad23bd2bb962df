"""One command on the login node over an open SSH connection: its command line and its run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shlex

import asyncssh

from glidein_client.site.runners.local import CommandResult
from glidein_client.site.runners.ssh_login import Target
from glidein_client.wire.errors import SchedulerError

log = logging.getLogger("glidein_client.site.runners.ssh")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: What a lost connection raises, in a command or a file operation.
LOST = (asyncssh.ConnectionLost, asyncssh.DisconnectError, ConnectionError, asyncssh.ChannelOpenError)


def remote_command(argv: list[str], env: dict[str, str] | None = None) -> str:
    """The one command line sent for ``argv`` (each word quoted), with ``env`` through ``env(1)``."""
    if not argv:
        raise ValueError("empty command")
    words = list(argv)
    if env:
        bad = [name for name in env if not _ENV_NAME.match(name)]
        if bad:
            raise ValueError(f"not an environment variable name: {bad[0]!r}")
        words = ["env", *(f"{name}={value}" for name, value in env.items()), *words]
    return shlex.join(words)


class LostWhileRunning(Exception):
    """The connection went away while a command ran."""


async def run_process(
    target: Target,
    conn: asyncssh.SSHClientConnection,
    argv: list[str],
    command: str,
    stdin: bytes | None,
    timeout_s: float,
) -> CommandResult:
    proc = await conn.create_process(command, encoding=None)
    try:
        try:
            if not stdin:
                proc.stdin.write_eof()  # (communicate() sends stdin and its end when there is some)
            out, err = await asyncio.wait_for(proc.communicate(stdin or None), timeout_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(Exception):
                proc.kill()
            raise SchedulerError(
                f"The command {argv[0]!r} did not answer within {timeout_s:.0f} s on {target}.",
                command=argv,
                hint="The batch system may be overloaded; the next cycle will try again.",
            ) from None
        except LOST as exc:
            raise LostWhileRunning() from exc
    finally:
        proc.close()
    code = proc.returncode
    if code is None:  # the channel closed without an exit status: the connection went away
        raise LostWhileRunning()
    if code < 0:
        code = 128 - code
    stdout = out.decode(errors="replace") if isinstance(out, bytes) else str(out)
    stderr = err.decode(errors="replace") if isinstance(err, bytes) else str(err)
    if code == 127 and argv[0] in stderr and ("not found" in stderr or "No such file" in stderr):
        raise SchedulerError(
            f"The command {argv[0]!r} was not found on {target}.",
            command=argv,
            hint=f"Install it there or put its directory on PATH for {target.user} in "
            "non-interactive logins (for bash: ~/.bashrc).",
            exit_code=code,
            stderr=stderr,
        )
    log.debug("ran %s on %s -> %d", argv[0], target, code)
    return CommandResult(tuple(argv), code, stdout, stderr)
