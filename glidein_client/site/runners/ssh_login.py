"""Logging in over SSH: the login target, the client that answers one code prompt, keys, known hosts,
and the plain-words errors of a refused or unverifiable login (used by :mod:`.ssh`)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import re
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncssh

from glidein_client.site.config import SshSection
from glidein_client.wire.errors import ConfigError, SshError

log = logging.getLogger("glidein_client.site.runners.ssh")
_JUMP = re.compile(r"^(?:(?P<user>[^@]+)@)?(?:\[(?P<ip6>[^\]]+)\]|(?P<host>[^:]+))(?::(?P<port>\d+))?$")


class LoginHost(Protocol):
    """What a login client reports to: the runner that opened it."""

    def _lost(self, client: LoginClient, exc: Exception | None) -> None: ...

    async def _answer(
        self, client: LoginClient, instructions: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str] | None: ...


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"


class LoginClient(asyncssh.SSHClient):
    """One login attempt: answers at most one code prompt and reports a dropped connection."""

    def __init__(self, runner: LoginHost, target: Target) -> None:
        self.runner = runner
        self.target = target
        self.conn: asyncssh.SSHClientConnection | None = None
        self.code_sent = False
        self.unanswerable: str | None = None  # a prompt that could not be answered, and why

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        self.runner._lost(self, exc)

    def auth_banner_received(self, msg: str, lang: str) -> None:
        log.debug("%s says: %s", self.target, msg.strip())

    def kbdint_auth_requested(self) -> str | None:
        return None if self.code_sent or self.unanswerable else ""

    async def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str] | None:
        if not prompts:
            return []  # an information round (PAM sends one after the code)
        if self.code_sent or self.unanswerable:
            return None  # one code per login: a refused code is never tried again here
        answers = await self.runner._answer(self, instructions, prompts)
        if answers is not None:
            self.code_sent = True
        return answers


def load_keys(settings: SshSection, config_path: str) -> list[asyncssh.SSHKey] | None:
    path = settings.key_file
    if not path:
        return None  # ssh-agent and ~/.ssh/id_*, as ssh does
    try:
        return [asyncssh.read_private_key(path)]
    except (OSError, asyncssh.KeyImportError) as exc:
        text = getattr(exc, "strerror", None) or str(exc)
        raise SshError(
            f"Cannot use the key file {path} (named in {config_path} as ssh.key_file): {text}.",
            hint="glidein needs a key it can read unattended: a key without passphrase, or leave "
            "ssh.key_file unset and load the key into ssh-agent.",
            reason="key-file",
        ) from None


def load_known_hosts(settings: SshSection, config_path: str) -> asyncssh.SSHKnownHosts:
    path = settings.known_hosts
    if not os.path.exists(path):
        return asyncssh.import_known_hosts("")
    try:
        return asyncssh.read_known_hosts(path)
    except (OSError, ValueError) as exc:
        raise SshError(
            f"Cannot read the known_hosts file {path} (ssh.known_hosts in {config_path}): {exc}.",
            reason="known-hosts",
        ) from None


async def host_key_error(
    settings: SshSection, target: Target, tunnel: asyncssh.SSHClientConnection | None, known: asyncssh.SSHKnownHosts
) -> SshError:
    path = settings.known_hosts
    name = f"[{target.host}]:{target.port}" if target.port != 22 else target.host
    listed = asyncssh.match_known_hosts(known, target.host, "", target.port if target.port != 22 else None)[0]
    changed = bool(listed)
    key: asyncssh.SSHKey | None = None
    with contextlib.suppress(Exception):
        key = await asyncssh.get_server_host_key(target.host, target.port, tunnel=tunnel or (), config=None)
    fields = {"reason": "host-key-changed" if changed else "host-key-unknown", "host": str(target)}
    seen, line = "glidein could not read its key a second time to show the fingerprint", ""
    if key is not None:
        algorithm, data = key.export_public_key("openssh").decode().split()[:2]
        fields["fingerprint"] = key.get_fingerprint("sha256")
        seen = f"The key it offers is {algorithm} {fields['fingerprint']}"
        line = f" If it matches, add this line to {path}:\n    {name} {algorithm} {data}"
    check = (
        "Compare it with the fingerprint the site publishes, or that its admins read on the login node "
        "with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`."
    )
    if changed:
        return SshError(
            f"The host key of {target.host}:{target.port} has CHANGED: it is not the one in {path}. "
            f"Someone may be intercepting the connection, or the site re-installed the login node. {seen}.",
            hint=f"Ask the site whether the key changed. {check} Only then remove the old line "
            f"(`ssh-keygen -R '{name}' -f {path}`).{line}",
            **fields,
        )
    return SshError(
        f"The host key of {target.host}:{target.port} is not in {path}; glidein trusts no unknown host. {seen}.",
        hint=f"{check}{line}",
        **fields,
    )


def denied_error(settings: SshSection, config_path: str, target: Target, client: LoginClient) -> SshError:
    secret = settings.totp_secret_file
    if client.unanswerable:
        reason, message = "prompt", f"{target} asks for a one-time code, and {client.unanswerable}."
        hint = (
            f"Set ssh.totp_secret_file in {config_path} to the TOTP secret enrolled for this login, "
            "or run glidein-client in a terminal. glidein does not try this login again until restarted: "
            "repeated attempts could lock the account."
        )
    elif client.code_sent:
        reason, message = "code-refused", f"{target} refused the one-time code (the key was accepted)."
        hint = (
            f"Check that {secret} holds the secret enrolled for {target.user} there and that this "
            "machine's clock is right (`date -u`)."
            if secret
            else "Type the current code of the login."
        )
    else:
        reason = "key-refused"
        key = settings.key_file or "the ssh-agent's and ~/.ssh's keys"
        message = f"{target} refused the login of {target.user} with {key}."
        hint = f"Check that the public key is in ~/.ssh/authorized_keys of {target.user} on {target.host}."
    return SshError(message, hint=hint, reason=reason, host=str(target))


def parse_jump(text: str, default_user: str) -> Target:
    m = _JUMP.match(text)
    if m is None:  # the config schema checks the form already
        raise ConfigError(f"ssh.jump_host {text!r} is not [user@]host[:port].", field="ssh.jump_host")
    return Target(m["ip6"] or m["host"], int(m["port"] or 22), m["user"] or default_user)


async def ask_terminal(prompt: str, echo: bool) -> str | None:
    """One answer typed at the terminal (None at end of input), read in a daemon thread so that
    stopping the client never waits for a person."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str | None] = loop.create_future()

    def settle(value: str | None) -> None:
        if not future.done():
            future.set_result(value)

    def read() -> None:
        value: str | None = None
        try:
            if echo:
                print(prompt, end="", file=sys.stderr, flush=True)
                value = sys.stdin.readline().rstrip("\n") or None
            else:
                value = getpass.getpass(prompt)
        except (EOFError, OSError):
            pass
        loop.call_soon_threadsafe(settle, value)

    threading.Thread(target=read, name="glidein-code-prompt", daemon=True).start()
    return await future
