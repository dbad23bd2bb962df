"""The SSH runner against a REAL OpenSSH sshd requiring a key and a TOTP code (tests/infra/sshd.py).

Login attempts are counted in sshd's own log: "Accepted keyboard-interactive/pam" per completed
login, "Failed keyboard-interactive/pam" per refused code, "Connection from" per connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncssh
import msgspec
import pyotp
import pytest

from glidein_client.site.config import SshSection
from glidein_client.site.runners.ssh import SshRunner
from glidein_client.wire.errors import ConfigError, SchedulerError, SshError
from tests.infra import sshd as sshd_infra
from tests.infra.sshd import SshServer

pytestmark = pytest.mark.sshd
sshd = sshd_infra.sshd  # a fresh real sshd per test


def section(server: SshServer, **overrides: Any) -> SshSection:
    return msgspec.convert(server.ssh_section(**overrides), SshSection)


def fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True, timeout=10)
    return out.stdout.split()[1]


async def test_commands_and_files_share_one_login(sshd: SshServer) -> None:
    async with SshRunner(section(sshd)) as runner:
        # many commands at once: more than sshd's MaxSessions (10) channels are never opened
        results = await asyncio.gather(*(runner.run(["sh", "-c", f"sleep 0.2; echo {i}"]) for i in range(25)))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(25)]
        # quoting: each argv element arrives as one word, nothing is interpreted
        odd = ["it's", "$(id)", "a b", "*", ";true", ""]
        echo = await runner.run(["printf", "%s|", *odd])
        assert echo.stdout == "|".join(odd) + "|"
        failed = await runner.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (failed.returncode, failed.stdout, failed.stderr) == (3, "out\n", "err\n")
        assert (await runner.run(["cat"], stdin=b"input\n")).stdout == "input\n"
        assert (await runner.run(["cat"])).stdout == ""  # no stdin: end of file at once
        env = await runner.run(["sh", "-c", 'echo "$GREETING"'], env={"GREETING": "hello there"})
        assert env.stdout == "hello there\n"
        assert (await runner.run(["id", "-un"])).stdout.strip() == sshd.user

        with pytest.raises(SchedulerError, match="'no-such-command' was not found"):
            await runner.run(["no-such-command"])
        with pytest.raises(SchedulerError, match="did not answer within 1 s"):
            await runner.run(["sleep", "30"], timeout_s=1)

        base = sshd.user_dir / "files"
        await runner.makedirs(str(base / "a" / "b"), mode=0o700)
        assert (base / "a" / "b").is_dir() and (base / "a" / "b").stat().st_mode & 0o777 == 0o700
        await runner.write_file(str(base / "a" / "b" / "token"), b"secret", mode=0o600)
        await runner.write_file(str(base / "a" / "b" / "token"), b"secret2", mode=0o640)  # replaced atomically
        written = base / "a" / "b" / "token"
        assert written.read_bytes() == b"secret2" and written.stat().st_mode & 0o777 == 0o640
        assert written.stat().st_uid == os.stat(sshd.user_dir).st_uid  # the remote user's file
        assert sorted(p.name for p in written.parent.iterdir()) == ["token"]  # no temporary left
        assert await runner.read_file(str(written)) == b"secret2"
        with pytest.raises(FileNotFoundError):
            await runner.read_file(str(base / "absent"))
        with pytest.raises(PermissionError):
            await runner.write_file("/etc/glidein-must-not-exist", b"x")
        assert await runner.home() == f"/home/{sshd.user}"
        assert runner.logins == 1
    assert sshd.logins() == 1 and sshd.failed_codes() == 0


async def test_unknown_host_key_is_refused_with_its_fingerprint(sshd: SshServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    runner = SshRunner(section(sshd, known_hosts=str(known)))
    with pytest.raises(SshError) as info:
        await runner.run(["true"])
    error = info.value
    assert error.fields["reason"] == "host-key-unknown"
    assert f"{sshd.host}:{sshd.port} is not in {known}" in error.message
    assert fingerprint(sshd.host_key_pub) in error.message
    assert "ssh-keygen -lf" in str(error)  # how to check it
    assert sshd.logins() == 0 and sshd.failed_codes() == 0  # no login was attempted
    # the line the hint gives is the one to add: with it, the login works
    line = str(error.hint).split(f"add this line to {known}:")[1].strip().splitlines()[0]
    known.write_text(line + "\n")
    runner = SshRunner(section(sshd, known_hosts=str(known)))
    async with runner:
        assert (await runner.run(["echo", "ok"])).stdout == "ok\n"


def other_host_key(tmp_path: Path, server: SshServer) -> Path:
    """A known_hosts file that lists another key for ``server``."""
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True, timeout=10)
    known = tmp_path / "known_hosts"
    algorithm, data = Path(f"{other}.pub").read_text().split()[:2]
    known.write_text(f"[{server.host}]:{server.port} {algorithm} {data}\n")
    return known


async def test_changed_host_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    known = await asyncio.to_thread(other_host_key, tmp_path, sshd)
    with pytest.raises(SshError) as info:
        await SshRunner(section(sshd, known_hosts=str(known))).run(["true"])
    assert info.value.fields["reason"] == "host-key-changed"
    assert "has CHANGED" in info.value.message
    assert fingerprint(sshd.host_key_pub) in info.value.message
    assert "ssh-keygen -R" in str(info.value)
    assert sshd.logins() == 0


async def test_wrong_code_fails_once_then_backs_off(sshd: SshServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.totp"
    wrong.write_text(pyotp.random_base32() + "\n")
    wrong.chmod(0o600)
    runner = SshRunner(section(sshd, totp_secret_file=str(wrong)), auth_retry_s=60)
    with pytest.raises(SshError) as info:
        await runner.run(["true"])
    assert info.value.fields["reason"] == "code-refused"
    assert f"{sshd.user}@{sshd.host}:{sshd.port} refused the one-time code (the key was accepted)" in str(info.value)
    assert str(wrong) in str(info.value) and "clock" in str(info.value)
    assert "tries this login again in 60 s" in str(info.value)
    # one code per login: sshd saw exactly one refused code, not the six it would allow
    assert (sshd.failed_codes(at_least=1), sshd.connections()) == (1, 1)
    for _ in range(3):  # within the back-off nothing reaches the login node
        with pytest.raises(SshError) as again:
            await runner.write_file(str(sshd.user_dir / "x"), b"x")
        assert again.value.fields["reason"] == "backoff"
        assert "the last attempt failed" in again.value.message
    assert (sshd.failed_codes(at_least=1), sshd.connections()) == (1, 1)


async def test_secret_readable_by_others_is_refused_before_connecting(sshd: SshServer, tmp_path: Path) -> None:
    secret = tmp_path / "open.totp"
    secret.write_text(sshd.secret + "\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        await SshRunner(section(sshd, totp_secret_file=str(secret))).run(["true"])
    assert f"chmod 600 {secret}" in str(info.value)
    assert sshd.connections() == 0


async def test_no_terminal_and_no_secret_says_so_and_does_not_retry(sshd: SshServer) -> None:
    runner = SshRunner(section(sshd, totp_secret_file=None), interactive=False, auth_retry_s=0.1, retry_s=0.1)
    for _ in range(3):
        with pytest.raises(SshError) as info:
            await runner.run(["true"])
        assert info.value.fields["reason"] == "prompt"
        assert "asks for a one-time code, and nobody is at a terminal" in info.value.message
        assert "ssh.totp_secret_file" in str(info.value)
        await asyncio.sleep(0.2)
    assert sshd.connections() == 1  # asked once, then waits for a person: never hammers the login
    assert sshd.failed_codes() == 0 and sshd.logins() == 0


async def test_connection_lost_during_a_command_is_reported_not_repeated(sshd: SshServer) -> None:
    marker = sshd.user_dir / "ran"
    async with SshRunner(section(sshd)) as runner:
        task = asyncio.create_task(runner.run(["sh", "-c", f"echo once >> {marker}; sleep 30"]))
        for _ in range(200):  # until the command runs
            if marker.exists():
                break
            await asyncio.sleep(0.05)
        assert sshd.kill_sessions() > 0
        with pytest.raises(SshError) as info:
            await task
        assert info.value.fields["reason"] == "lost"
        assert "was lost while `sh` ran; it may or may not have finished" in info.value.message
        assert "not repeated" in str(info.value)
        assert not runner.connected
    assert marker.read_text() == "once\n"
    assert sshd.logins() == 1


async def test_silent_connection_is_ended_by_keepalives(sshd: SshServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="glidein_client.site.runners.ssh")
    async with SshRunner(section(sshd, keepalive_s=1)) as runner:
        await runner.run(["true"])
        sshd.kill_sessions(signal.SIGSTOP)  # the login node stops answering, the TCP connection stays up
        began = time.monotonic()
        for _ in range(100):
            if not runner.connected:
                break
            await asyncio.sleep(0.1)
        assert not runner.connected, "three unanswered keepalives end the connection"
        assert time.monotonic() - began < 8
    assert any("was lost" in r.getMessage() for r in caplog.records)


async def test_jump_host(tmp_path: Path) -> None:
    sshd_infra.require_sshd()
    with SshServer() as jump, SshServer(secret=jump.secret) as target:
        target.authorize(Path(f"{jump.client_key}.pub"))  # one key and one secret for both, as for one site
        known = tmp_path / "known_hosts"
        known.write_text(jump.known_hosts.read_text() + target.known_hosts.read_text())
        settings = section(
            jump, port=target.port, known_hosts=str(known), jump_host=f"{jump.user}@{jump.host}:{jump.port}"
        )
        async with SshRunner(settings) as runner:
            assert (await runner.run(["echo", "through"])).stdout == "through\n"
            await runner.write_file(str(target.user_dir / "f"), b"via jump")
        assert (target.user_dir / "f").read_bytes() == b"via jump"
        assert (jump.logins(), target.logins()) == (1, 1)


@pytest.mark.slow
async def test_second_login_in_the_same_window_waits_for_the_next_code(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sshd_infra.require_sshd()
    caplog.set_level(logging.INFO, logger="glidein_client.site.runners.ssh")
    with SshServer(disallow_reuse=True) as server:
        totp = server.totp()
        async with SshRunner(section(server)) as first:
            await first.run(["true"])
        window = int(time.time() // 30)
        # the server really refuses a code used once (DISALLOW_REUSE): sending it again would fail
        replayed = int(time.time() // 30) == window
        if replayed:
            with pytest.raises(asyncssh.PermissionDenied):
                await raw_login(server, totp.at(window * 30))
        began = time.monotonic()
        async with SshRunner(section(server)) as second:  # another runner: the process remembers
            await second.run(["true"])
        waited = time.monotonic() - began
        assert int(time.time() // 30) > window
        assert waited >= (window + 1) * 30 - time.time() - 2
        assert server.logins() == 2
        # the replay only; the runners never failed
        assert server.failed_codes(at_least=int(replayed)) == int(replayed)
        assert any("waiting" in r.getMessage() and "fresh one-time code" in r.getMessage() for r in caplog.records)


async def raw_login(server: SshServer, code: str) -> None:
    """One login with a given code (for showing what the server accepts)."""

    class Client(asyncssh.SSHClient):
        sent = False

        def kbdint_auth_requested(self) -> str | None:
            return None if self.sent else ""

        def kbdint_challenge_received(self, name: str, instructions: str, lang: str, prompts: Any) -> list[str] | None:
            if not prompts:
                return []
            if self.sent:
                return None
            self.sent = True
            return [code]

    conn, _ = await asyncssh.create_connection(
        Client,
        server.host,
        server.port,
        username=server.user,
        client_keys=[str(server.client_key)],
        known_hosts=str(server.known_hosts),
        agent_path=None,
        config=None,
    )
    conn.close()


def test_code_typed_at_the_terminal(sshd: SshServer, tmp_path: Path) -> None:
    # `glidein-client check` in a terminal, without a TOTP secret: it asks, and the typed code logs in
    token = tmp_path / "site.token"
    token.write_text("token\n")
    token.chmod(0o600)
    config = tmp_path / "site.toml"
    ssh = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in sshd.ssh_section().items() if k != "totp_secret_file")
    config.write_text(
        f'[site]\nname = "t"\nserver_url = "http://127.0.0.1:9"\ntoken_file = "{token}"\n'
        f'scheduler = "slurm"\nscratch_dir = "{sshd.user_dir}/scratch"\n'
        f'[batch]\npython = "/usr/bin/python3"\n[ssh]\n{ssh}'
    )
    fd, terminal = pty.openpty()
    proc = subprocess.Popen(  # its own session: the prompt goes to this terminal only
        [sys.executable, "-m", "glidein_client.site.cli", "check", str(config)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    output = b""
    try:
        output = read_until(fd, b"Verification code:", 20)
        os.write(fd, sshd.totp().now().encode() + b"\n")
        output += read_until(fd, b"server:", 30)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        os.close(fd)
    text = output.decode(errors="replace")
    assert f"{sshd.user}@{sshd.host}:{sshd.port} Verification code:" in text
    assert f"ok   ssh login: logged in to {sshd.user}@{sshd.host}:{sshd.port}" in text, text
    assert "ok   command sbatch" in text or "FAIL command sbatch" in text  # the checks went on over the login
    assert sshd.logins() == 1


def read_until(fd: int, needle: bytes, timeout_s: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout_s
    while needle not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen in {out.decode(errors='replace')!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out
