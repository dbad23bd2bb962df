"""The SSH runner: the site client's commands and files on a remote login node, over one SSH login.

Many HPC centres let people in only with a key plus a one-time code. :class:`SshRunner`
implements the :class:`~glidein_client.site.runners.local.Runner` seam over such a login, so every batch
backend works remotely unchanged:

- **One login serves many cycles.** The connection is kept open with keepalives and shared by
  every command (one channel each, many at once) and by one SFTP session for files. It is
  established on first use and again only after it dropped.
- **Key, then code.** Public key, then the keyboard-interactive prompt answered with a TOTP code
  from ``ssh.totp_secret_file`` (mode 0600 or refused), or typed by the operator when no secret is
  configured and a terminal is attached. Exactly one code is sent per login: a refused code is
  not retried on that connection.
- **A code is never sent twice.** The time window of the last code sent per login target is
  kept (in this process, and in a small file beside the secret for other processes); a login in
  the same window waits for the next one.
- **No hammering.** A failed login is retried only after a back-off (from ``auth_retry_s`` for a
  refused login, from ``retry_s`` when the host could not be reached, doubling up to
  ``max_retry_s``); calls in between fail at once without touching the login node. When a code
  would have to be typed and nobody is at a terminal, the runner says so and does not try again.
- **Host keys** are checked against ``ssh.known_hosts``. An unknown or changed key stops with its
  fingerprint and the line to add once it is checked; nothing is trusted silently.
- **Jump host**: ``ssh.jump_host`` is logged in to first (same key and code source) and the login
  node is reached through it.

Commands go as one command line built with :func:`shlex.join` from the argv list (the remote
user's login shell must be a POSIX shell); environment additions go through ``env NAME=VALUE``.
A command whose connection dropped before it started runs on a new connection; one under way
when it dropped is reported (it may have run) and never repeated, so nothing is submitted
twice. File operations (SFTP) are idempotent and are retried once on a new connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import getpass
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import TypeVar

import asyncssh
import asyncssh.constants as _c
import pyotp

from glidein_client.site.config import SshSection
from glidein_client.site.runners.local import CommandResult
from glidein_client.site.runners.ssh_codes import CodeLedger, read_totp_secret
from glidein_client.site.runners.ssh_login import (
    LoginClient,
    Target,
    ask_terminal,
    denied_error,
    host_key_error,
    load_keys,
    load_known_hosts,
    parse_jump,
)
from glidein_client.site.runners.ssh_process import LOST as _LOST
from glidein_client.site.runners.ssh_process import LostWhileRunning, remote_command, run_process
from glidein_client.wire.errors import SshError

log = logging.getLogger(__name__)
if logging.getLogger("asyncssh").level == logging.NOTSET:  # it logs every channel at INFO
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

T = TypeVar("T")

#: Reasons (``SshError.fields["reason"]``) that only a person can fix: retried after ``auth_retry_s``.
_SLOW_REASONS = frozenset({"code-refused", "key-refused", "host-key-unknown", "host-key-changed", "prompt"})
#: SFTP status -> errno, so that file errors are the same OSError subclasses as the local runner's.
_SFTP_ERRNO = {
    _c.FX_NO_SUCH_FILE: errno.ENOENT,
    _c.FX_NO_SUCH_PATH: errno.ENOENT,
    _c.FX_PERMISSION_DENIED: errno.EACCES,
    _c.FX_WRITE_PROTECT: errno.EROFS,
    _c.FX_FILE_ALREADY_EXISTS: errno.EEXIST,
    _c.FX_NOT_A_DIRECTORY: errno.ENOTDIR,
    _c.FX_FILE_IS_A_DIRECTORY: errno.EISDIR,
    _c.FX_NO_SPACE_ON_FILESYSTEM: errno.ENOSPC,
    _c.FX_QUOTA_EXCEEDED: errno.EDQUOT,
}
_SFTP_LOST = frozenset({_c.FX_CONNECTION_LOST, _c.FX_NO_CONNECTION})


class SshRunner:
    """Runs commands and moves files on a login node over one shared SSH connection.

    The constructor does no I/O; the first call logs in. Use ``async with`` (or :meth:`aclose`)
    to log out. ``interactive`` says whether a person can type a code (default: stdin is a TTY).
    """

    def __init__(
        self,
        settings: SshSection,
        *,
        config_path: str = "<config>",
        interactive: bool | None = None,
        retry_s: float = 5.0,
        auth_retry_s: float = 60.0,
        max_retry_s: float = 900.0,
        max_channels: int = 6,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.target = Target(settings.host, settings.port, settings.user or getpass.getuser())
        self.interactive = interactive
        self.retry_s = retry_s
        self.auth_retry_s = auth_retry_s
        self.max_retry_s = max_retry_s
        #: Completed logins of this runner (the first, and one per re-established connection).
        self.logins = 0
        self._conn: asyncssh.SSHClientConnection | None = None
        self._jump: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._sftp_conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._sftp_lock = asyncio.Lock()
        self._channels = asyncio.Semaphore(max_channels)  # sshd's default MaxSessions is 10 (SFTP takes one)
        self._failures = 0
        self._delay_s = 0.0
        self._retry_at = 0.0
        self._last_error: SshError | None = None
        self._blocked: SshError | None = None
        self._typed: dict[str, str] = {}
        self._totp: pyotp.TOTP | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def __aenter__(self) -> SshRunner:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Log out (close the connection and the jump host's)."""
        self._closing = True
        conns = [c for c in (self._conn, self._jump) if c is not None]
        self._conn = self._jump = self._sftp = self._sftp_conn = None
        for conn in conns:
            conn.close()
        for conn in conns:
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except Exception:  # a login node that stopped answering: drop it
                conn.abort()
        self._closing = False

    # --- Runner protocol -----------------------------------------------------------------------

    async def run(
        self, argv: list[str], *, stdin: bytes | None = None, env: dict[str, str] | None = None, timeout_s: float = 60.0
    ) -> CommandResult:
        command = remote_command(argv, env)
        reopened = False
        for attempt in range(8):
            conn = await self.connection()
            try:
                async with self._channels:
                    return await run_process(self.target, conn, argv, command, stdin, timeout_s)
            except asyncssh.ChannelOpenError as exc:  # the command did not start
                if conn is self._conn and not conn.is_closed():  # refused for now (sshd MaxSessions, load)
                    if attempt < 7:
                        log.debug("%s refused a channel (%s); trying again", self.target, exc.reason)
                        await asyncio.sleep(0.05 * 2**attempt)
                        continue
                    raise SshError(
                        f"{self.target} refused to run `{argv[0]}`: {exc.reason}.",
                        command=argv,
                        hint="The login node may limit sessions per connection (sshd MaxSessions).",
                        reason="channel-refused",
                    ) from None
                self._drop(conn, exc)
                if reopened:
                    raise self._lost_error(argv, started=False) from None
                reopened = True  # the command was never sent: run it on a new connection
                log.info(
                    "connection to %s lost before `%s` started; running it after a new login", self.target, argv[0]
                )
            except LostWhileRunning as exc:
                self._drop(conn, exc.__cause__)
                raise self._lost_error(argv, started=True) from None
            except _LOST as exc:
                self._drop(conn, exc)
                raise self._lost_error(argv, started=True) from None
        raise AssertionError("unreachable")

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write atomically: a temporary file with ``mode`` beside ``path``, then renamed over it."""
        target = _remote_path(path)
        head, name = os.path.split(target)
        tmp = os.path.join(head, f".{name}.tmp{os.getpid()}-{time.monotonic_ns() % 10**9}")

        async def op(sftp: asyncssh.SFTPClient) -> None:
            async with sftp.open(tmp, "wb", attrs=asyncssh.SFTPAttrs(permissions=mode)) as fh:
                await fh.write(data)
            await sftp.chmod(tmp, mode)  # exact, whatever the umask
            try:
                await sftp.posix_rename(tmp, target)
            except asyncssh.SFTPOpUnsupported:
                with contextlib.suppress(asyncssh.SFTPError):
                    await sftp.remove(target)
                await sftp.rename(tmp, target)

        await self._file_op(path, op)

    async def read_file(self, path: str) -> bytes:
        async def op(sftp: asyncssh.SFTPClient) -> bytes:
            async with sftp.open(_remote_path(path), "rb") as fh:
                data: bytes = await fh.read()
            return data

        return await self._file_op(path, op)

    async def makedirs(self, path: str, *, mode: int = 0o700) -> None:
        async def op(sftp: asyncssh.SFTPClient) -> None:
            await sftp.makedirs(_remote_path(path), attrs=asyncssh.SFTPAttrs(permissions=mode), exist_ok=True)

        await self._file_op(path, op)

    # --- more than the Runner protocol -----------------------------------------------------------

    async def home(self) -> str:
        """The remote user's home directory (absolute)."""

        async def op(sftp: asyncssh.SFTPClient) -> str:
            return str(await sftp.realpath("."))

        return await self._file_op("~", op)

    async def exists(self, path: str) -> bool:
        async def op(sftp: asyncssh.SFTPClient) -> bool:
            return bool(await sftp.exists(_remote_path(path)))

        return await self._file_op(path, op)

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The shared connection; logs in when there is none (subject to the back-off)."""
        conn = self._conn
        if conn is not None:
            return conn
        async with self._lock:
            if self._conn is not None:
                return self._conn
            if self._blocked is not None:
                raise SshError(self._blocked.message, hint=self._blocked.hint, **self._blocked.fields)
            wait_s = self._retry_at - time.monotonic()
            if wait_s > 0 and self._last_error is not None:
                last = self._last_error
                raise SshError(
                    f"Not logging in to {self.target} for another {wait_s:.0f} s; the last attempt failed: "
                    f"{last.message}",
                    hint=last.fields.get("fix") or None,
                    reason="backoff",
                    last_reason=last.fields.get("reason"),
                )
            try:
                self._conn, self._jump = await self._login()
            except SshError as exc:
                self._note_failure(exc)
                raise
            self._failures, self._delay_s, self._retry_at, self._last_error = 0, 0.0, 0.0, None
            self.logins += 1
            log.info("logged in to %s (login %d of this client)", self.target, self.logins)
            return self._conn

    # --- logging in ------------------------------------------------------------------------------

    def _note_failure(self, exc: SshError) -> None:
        reason = exc.fields.get("reason")
        exc.fields.setdefault("fix", exc.hint or "")
        if reason == "prompt":
            self._blocked = exc
            return
        first = self.auth_retry_s if reason in _SLOW_REASONS else self.retry_s
        self._delay_s = first if self._failures == 0 else min(self._delay_s * 2, self.max_retry_s)
        self._failures += 1
        self._retry_at = time.monotonic() + self._delay_s
        self._last_error = exc
        again = f"glidein tries this login again in {self._delay_s:.0f} s at the earliest."
        exc.hint = f"{exc.hint} {again}" if exc.hint else again
        log.warning("login to %s failed: %s", self.target, exc.message)

    async def _login(self) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientConnection | None]:
        keys = await asyncio.to_thread(load_keys, self.settings, self.config_path)
        known = await asyncio.to_thread(load_known_hosts, self.settings, self.config_path)
        secret = self.settings.totp_secret_file  # read (and its mode checked) before any connection
        self._totp = await asyncio.to_thread(read_totp_secret, secret, config=self.config_path) if secret else None
        jump: asyncssh.SSHClientConnection | None = None
        if self.settings.jump_host:
            jump_target = parse_jump(self.settings.jump_host, self.target.user)
            log.info("logging in to jump host %s", jump_target)
            jump = await self._open(jump_target, None, keys, known)
        try:
            log.info("logging in to %s", self.target)
            conn = await self._open(self.target, jump, keys, known)
        except BaseException:
            if jump is not None:
                jump.close()
            raise
        return conn, jump

    async def _open(
        self,
        target: Target,
        tunnel: asyncssh.SSHClientConnection | None,
        keys: list[asyncssh.SSHKey] | None,
        known: asyncssh.SSHKnownHosts,
    ) -> asyncssh.SSHClientConnection:
        client = LoginClient(self, target)
        code_wait_s = 35.0 if self.settings.totp_secret_file else 600.0
        try:
            conn, _ = await asyncssh.create_connection(
                lambda: client,
                target.host,
                target.port,
                tunnel=tunnel or (),
                username=target.user,
                known_hosts=known,
                client_keys=keys if keys is not None else (),
                agent_path=None if keys is not None else (),  # with a key file: that key only
                preferred_auth="publickey,keyboard-interactive",
                gss_host=None,
                config=None,
                keepalive_interval=self.settings.keepalive_s,
                keepalive_count_max=3,
                connect_timeout=self.settings.connect_timeout_s + code_wait_s,
            )
        except asyncssh.HostKeyNotVerifiable:
            raise await host_key_error(self.settings, target, tunnel, known) from None
        except asyncssh.PermissionDenied:
            raise denied_error(self.settings, self.config_path, target, client) from None
        except asyncssh.DisconnectError as exc:
            if client.code_sent:
                raise denied_error(self.settings, self.config_path, target, client) from None
            raise SshError(
                f"{target} ended the login: {exc.reason}.",
                reason="disconnected",
                hint=f"Check the [ssh] section of {self.config_path}.",
            ) from None
        except (OSError, asyncio.TimeoutError) as exc:
            what = getattr(exc, "strerror", None) or str(exc) or "no answer in time"
            raise SshError(
                f"Cannot reach {target}: {what}.",
                reason="unreachable",
                hint=f"Check ssh.host and ssh.port in {self.config_path} and that the login node is up.",
            ) from None
        assert isinstance(conn, asyncssh.SSHClientConnection)
        return conn

    async def _answer(
        self, client: LoginClient, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str] | None:
        """The code for a keyboard-interactive prompt; None when it cannot be answered."""
        asked = "; ".join(p.strip() for p, _ in prompts)
        if any("password" in p.lower() for p, _ in prompts):
            client.unanswerable = f"asks for a password ({asked!r}), which glidein does not send"
            return None
        key = str(client.target)
        secret, totp = self.settings.totp_secret_file, self._totp
        if secret and totp is not None:
            ledger = os.path.join(os.path.dirname(secret), f".{os.path.basename(secret)}.used")
            counter, wait_s = CodeLedger.reserve(key, totp.interval, ledger)
            if wait_s > 0:
                log.info(
                    "waiting %.0f s for a fresh one-time code for %s: the current one was sent already",
                    wait_s,
                    client.target,
                )
                await asyncio.sleep(wait_s)
            code = totp.at(counter * totp.interval)
            return [code for _ in prompts]
        interactive = self.interactive if self.interactive is not None else sys.stdin.isatty()
        if not interactive:
            client.unanswerable = "nobody is at a terminal to type it (no ssh.totp_secret_file is set)"
            log.warning(
                "%s asks for a one-time code; nobody is at a terminal and no TOTP secret is configured", client.target
            )
            return None
        if instructions.strip():
            print(instructions.strip(), file=sys.stderr)
        answers = []
        for prompt, echo in prompts:
            answer = await ask_terminal(f"{client.target} {prompt.strip()} ", echo)
            while answer is not None and answer.strip() == self._typed.get(key):
                print("That code was used for the last login; wait for the next one.", file=sys.stderr)
                answer = await ask_terminal(f"{client.target} {prompt.strip()} ", echo)
            if answer is None:
                client.unanswerable = "the terminal closed before a code was typed"
                return None
            self._typed[key] = answer.strip()
            answers.append(answer.strip())
        return answers

    # --- connection losses ------------------------------------------------------------------------

    def _lost(self, client: LoginClient, exc: Exception | None) -> None:
        if self._closing or client.conn is None or client.conn not in (self._conn, self._jump):
            return
        self._forget()
        log.warning(
            "the connection to %s was lost (%s); glidein logs in again when it next needs the login node",
            self.target,
            exc or "closed by the other side",
        )

    def _drop(self, conn: asyncssh.SSHClientConnection, exc: BaseException | None) -> None:
        if conn is self._conn:
            jump = self._jump
            self._forget()
            conn.abort()
            if jump is not None:
                jump.abort()
            log.warning(
                "the connection to %s failed (%s); glidein logs in again when it next needs the login node",
                self.target,
                exc or "lost",
            )

    def _forget(self) -> None:
        self._conn = self._jump = self._sftp = self._sftp_conn = None

    def _lost_error(self, argv: list[str], *, started: bool) -> SshError:
        if not started:
            return SshError(
                f"The connection to {self.target} dropped again before `{argv[0]}` started.",
                hint="The next cycle tries again.",
                command=argv,
                reason="lost",
            )
        return SshError(
            f"The connection to {self.target} was lost while `{argv[0]}` ran; it may or may not have finished.",
            command=argv,
            reason="lost",
            hint="It is not repeated: the next cycle reads the batch queue and goes on from what it finds.",
        )

    # --- commands and files ---------------------------------------------------------------------

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        conn = await self.connection()
        async with self._sftp_lock:
            if self._sftp is None or self._sftp_conn is not conn:
                self._sftp = await conn.start_sftp_client()
                self._sftp_conn = conn
            return self._sftp

    async def _file_op(self, path: str, op: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> T:
        for attempt in (1, 2):
            sftp = await self._sftp_client()
            conn = self._sftp_conn
            try:
                return await op(sftp)
            except asyncssh.SFTPError as exc:
                if exc.code not in _SFTP_LOST:  # OSError() makes the subclass that matches the errno
                    raise OSError(
                        _SFTP_ERRNO.get(exc.code, errno.EIO), f"{exc.reason} (on {self.target})", path
                    ) from None
                lost: BaseException = exc
            except _LOST as exc:
                lost = exc
            if conn is not None:
                self._drop(conn, lost)
            if attempt == 2:
                raise SshError(
                    f"The connection to {self.target} dropped twice while writing or reading {path}.",
                    hint="The next cycle tries again.",
                    reason="lost",
                )
        raise AssertionError("unreachable")


def _remote_path(path: str) -> str:
    """SFTP paths are relative to the home directory; ``~/x`` means the same."""
    if path == "~":
        return "."
    return path[2:] if path.startswith("~/") else path
