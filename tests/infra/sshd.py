"""A real OpenSSH sshd on loopback with public key + TOTP (PAM google-authenticator), for tests.

:class:`SshServer` starts ``/usr/sbin/sshd`` from the Debian packages
(``tests/infra/install_sshd.sh``) as a foreground daemon on 127.0.0.1 and a free high port.
It requires ``AuthenticationMethods publickey,keyboard-interactive``; the second factor is a
private PAM service (sshd names its PAM service after the basename of its ``argv[0]``, so it
runs through a symlink with a private name and ``/etc/pam.d/<that name>`` holds the stack;
the system's ``/etc/pam.d/sshd`` is never touched) with ``pam_google_authenticator`` reading
a per-server secret file. Logins are for a dedicated user (:data:`TEST_USER`, created with
``useradd`` when absent) with a freshly generated ed25519 key. The host key, the known_hosts
line, the client key and the TOTP secret (mode 0600) live in a state directory under /tmp.
With ``setenv`` the sessions get those variables (``SetEnv``, e.g. ``SLURM_CONF``).

The sshd log (``LogLevel VERBOSE``) goes to :attr:`SshServer.log_path`; :meth:`SshServer.logins`
and :meth:`SshServer.failed_codes` count successful logins and refused one-time codes in it.
:meth:`SshServer.kill_sessions` kills the sshd processes serving the open connections, which
drops them the way a network failure or a login-node reboot would.

The fixture :func:`sshd` yields a started server per test (a fresh port, so one-time codes of
other tests never collide). It skips with one line when not root or when sshd or the PAM
module is missing -- except when ``CI`` is set, where a missing piece fails the tests.

:func:`shared_wheels` builds the wheels of this checkout once per test process, and
:func:`shared_remote_python` installs them into a virtualenv that the test user can run (its
``python`` is what pilots started over SSH need as ``batch.python``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import pyotp
import pytest

from glidein_client.site.deploy_wheels import Wheels, build_wheels

SSHD = "/usr/sbin/sshd"
TEST_USER = "glidein-ssh-test"
#: Debian packages that provide sshd, the PAM module and crontab (see install_sshd.sh).
PACKAGES = "openssh-server libpam-google-authenticator cron"
PAM_MODULE_GLOBS = (
    "/lib/*/security/pam_google_authenticator.so",
    "/usr/lib/*/security/pam_google_authenticator.so",
    "/lib/security/pam_google_authenticator.so",
    "/usr/lib/security/pam_google_authenticator.so",
)
_CMD_TIMEOUT_S = 15.0


def pam_module() -> str | None:
    for pattern in PAM_MODULE_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def missing_pieces() -> list[str]:
    """What of sshd, ssh-keygen, the PAM module and crontab is not installed."""
    missing = [name for name in (SSHD, "/usr/bin/ssh-keygen") if not os.access(name, os.X_OK)]
    if pam_module() is None:
        missing.append("pam_google_authenticator.so")
    if shutil.which("crontab") is None:
        missing.append("crontab")
    return missing


def ensure_user(name: str = TEST_USER) -> pwd.struct_passwd:
    """The test user, created (with a home directory and bash) when absent."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", "--comment", "glidein ssh tests", name],
            check=True,
            capture_output=True,
            timeout=_CMD_TIMEOUT_S,
        )
        return pwd.getpwnam(name)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), deepest last."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(parents.get(child, []))
    return out


class SshServer:
    """One private sshd on 127.0.0.1 requiring a key and a TOTP code.

    The constructor only chooses settings; :meth:`start` writes the keys, the PAM service and
    the config and starts sshd; :meth:`stop` stops it and removes everything it wrote.
    """

    def __init__(
        self,
        *,
        disallow_reuse: bool = False,
        setenv: Mapping[str, str] | None = None,
        user: str = TEST_USER,
        secret: str | None = None,
        parent_dir: str = "/tmp",
    ) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.user = user
        self.disallow_reuse = disallow_reuse
        self.setenv = dict(setenv or {})
        self.secret = secret or pyotp.random_base32()
        self._parent_dir = parent_dir
        self.base_dir = Path()
        self.service = f"glidein-test-sshd-{uuid.uuid4().hex[:10]}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = False

    # ------------------------------------------------------------------ paths

    @property
    def log_path(self) -> Path:
        return self.base_dir / "sshd.log"

    @property
    def client_key(self) -> Path:
        return self.base_dir / "client" / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.base_dir / "client" / "known_hosts"

    @property
    def totp_secret_file(self) -> Path:
        return self.base_dir / "client" / "totp.secret"

    @property
    def user_dir(self) -> Path:
        """A directory owned by the test user (mode 0755), for its scratch and deployments."""
        return self.base_dir / "home"

    @property
    def host_key_pub(self) -> Path:
        return self.base_dir / "etc" / "ssh_host_ed25519_key.pub"

    @property
    def pam_file(self) -> Path:
        return Path("/etc/pam.d") / self.service

    def ssh_section(self, **overrides: Any) -> dict[str, Any]:
        """A ``[ssh]`` site-config section that logs in to this server."""
        section: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "key_file": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "totp_secret_file": str(self.totp_secret_file),
            "keepalive_s": 5,
            "connect_timeout_s": 10,
        }
        section.update(overrides)
        return section

    # ------------------------------------------------------------------ log

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def logins(self) -> int:
        """Completed logins (key and code accepted)."""
        return len(re.findall(r"Accepted keyboard-interactive/pam for \S+ from", self.log_text()))

    def failed_codes(self, *, at_least: int = 0) -> int:
        """One-time codes that PAM refused. sshd may log a refusal just after the client has read it,
        so a caller that expects ``at_least`` of them waits (up to 5 s) until that many are logged."""
        deadline = time.monotonic() + 5.0
        while True:
            found = len(re.findall(r"Failed keyboard-interactive/pam for \S+ from", self.log_text()))
            if found >= at_least or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def connections(self) -> int:
        """TCP connections that reached sshd (logins, failed logins and probes alike)."""
        return len(re.findall(r"Connection from \S+ port \d+ on", self.log_text()))

    def totp(self) -> pyotp.TOTP:
        return pyotp.TOTP(self.secret)

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, timeout_s: float = 15.0, attempts: int = 3) -> None:
        if self._started:
            return
        missing = missing_pieces()
        if missing:
            raise RuntimeError(f"missing {', '.join(missing)}; run tests/infra/install_sshd.sh as root")
        account = ensure_user(self.user)
        self._started = True
        atexit.register(self.stop)
        try:
            self._prepare(account)
            for attempt in range(1, attempts + 1):
                self.port = _free_port()
                self._write_config()
                if self._spawn(timeout_s):
                    return
                if attempt == attempts:
                    raise RuntimeError(f"sshd did not start:\n{self.log_text()[-2000:]}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop sshd and every session it serves; remove the PAM service and the state. Idempotent."""
        if not self._started:
            return
        self._started = False
        atexit.unregister(self.stop)
        self._stop_proc()
        with contextlib.suppress(FileNotFoundError):
            self.pam_file.unlink()
        if self.base_dir != Path():
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> SshServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def kill_sessions(self, sig: signal.Signals = signal.SIGKILL) -> int:
        """Signal the sshd processes (and their commands) serving open connections; how many.

        SIGKILL drops the connections at once; SIGSTOP leaves them open but silent, as a
        network that stopped passing packets would (:meth:`stop` ends them).
        """
        if self._proc is None:
            return 0
        pids = _children(self._proc.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(pids)

    def authorize(self, public_key_file: Path) -> None:
        """Accept logins with another key too (e.g. another server's client key)."""
        with open(self.base_dir / "etc" / "authorized_keys", "a") as fh:
            fh.write(public_key_file.read_text())

    def session_count(self) -> int:
        """sshd processes serving connections (one or two per connection)."""
        return 0 if self._proc is None else len(_children(self._proc.pid))

    # ------------------------------------------------------------------ start helpers

    def _prepare(self, account: pwd.struct_passwd) -> None:
        self.base_dir = Path(tempfile.mkdtemp(prefix="glidein-sshd-", dir=self._parent_dir))
        os.chmod(self.base_dir, 0o755)  # the test user reads its authorized_keys here
        for sub in ("etc", "client", "ga", "home"):
            (self.base_dir / sub).mkdir(mode=0o700)
        os.chmod(self.base_dir / "etc", 0o755)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
        subprocess.run(
            [*keygen, "-f", str(self.base_dir / "etc" / "ssh_host_ed25519_key")],
            check=True,
            capture_output=True,
            timeout=_CMD_TIMEOUT_S,
        )
        subprocess.run(
            [*keygen, "-C", "glidein-test", "-f", str(self.client_key)],
            check=True,
            capture_output=True,
            timeout=_CMD_TIMEOUT_S,
        )
        authorized = self.base_dir / "etc" / "authorized_keys"
        authorized.write_text(Path(f"{self.client_key}.pub").read_text())
        os.chmod(authorized, 0o644)
        fd = os.open(self.totp_secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.secret + "\n")
        # The PAM module reads (and with DISALLOW_REUSE rewrites, through a file beside it) the
        # secret as the user: the file and its directory belong to the user.
        ga_dir = self.base_dir / "ga"
        ga_file = ga_dir / "google_authenticator"
        lines = [self.secret, '" TOTP_AUTH', '" WINDOW_SIZE 3']
        if self.disallow_reuse:
            lines.append('" DISALLOW_REUSE')
        ga_file.write_text("\n".join(lines) + "\n")
        os.chmod(ga_file, 0o400)
        for path in (ga_dir, ga_file, self.user_dir):
            os.chown(path, account.pw_uid, account.pw_gid)
        os.chmod(self.user_dir, 0o755)
        self.pam_file.write_text(
            "# glidein test sshd: public key (sshd) + TOTP code (this stack). Removed when the test ends.\n"
            f"auth required {pam_module()} secret={ga_file} allowed_perm=0600\n"
            "account required pam_unix.so\n"
            "session required pam_unix.so\n"
        )
        link = self.base_dir / "etc" / self.service
        link.symlink_to(SSHD)

    def _write_config(self) -> None:
        etc = self.base_dir / "etc"
        lines = [
            f"ListenAddress {self.host}",
            f"Port {self.port}",
            f"HostKey {etc / 'ssh_host_ed25519_key'}",
            f"PidFile {etc / 'sshd.pid'}",
            f"AuthorizedKeysFile {etc / 'authorized_keys'}",
            "AuthenticationMethods publickey,keyboard-interactive",
            "PubkeyAuthentication yes",
            "KbdInteractiveAuthentication yes",
            "PasswordAuthentication no",
            "UsePAM yes",
            f"AllowUsers {self.user}",
            "PermitRootLogin no",
            "StrictModes no",
            "UseDNS no",
            "LogLevel VERBOSE",
            "PrintMotd no",
            "X11Forwarding no",
            "AllowTcpForwarding yes",
            "Subsystem sftp internal-sftp",
        ]
        if self.setenv:
            lines.append("SetEnv " + " ".join(f"{k}={v}" for k, v in self.setenv.items()))
        (etc / "sshd_config").write_text("\n".join(lines) + "\n")
        key = Path(f"{etc / 'ssh_host_ed25519_key'}.pub").read_text().split()
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {key[0]} {key[1]}\n")

    def _spawn(self, timeout_s: float) -> bool:
        etc = self.base_dir / "etc"
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()
        argv = [str(etc / self.service), "-D", "-f", str(etc / "sshd_config"), "-E", str(self.log_path)]
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        ready = f"Server listening on {self.host} port {self.port}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready in self.log_text():
                return True
            if self._proc.poll() is not None:
                self._proc = None
                return False  # most likely the port was taken in between: try another
            time.sleep(0.02)
        self._stop_proc()
        raise RuntimeError(f"sshd did not listen within {timeout_s:.0f} s:\n{self.log_text()[-2000:]}")

    def _stop_proc(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        sessions = _children(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


_shared: dict[str, Any] = {}


def shared_wheels() -> Wheels:
    """The wheels of this checkout and its dependencies, built once per test process (world-readable)."""
    if "wheels" not in _shared:
        dest = Path(tempfile.mkdtemp(prefix="glidein-test-wheels-"))
        atexit.register(shutil.rmtree, dest, True)
        os.chmod(dest, 0o755)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # its own event loop, not the test's
            wheels = pool.submit(asyncio.run, build_wheels(dest)).result()
        for wheel in wheels.files:
            os.chmod(wheel, 0o644)
        _shared["wheels"] = wheels
    wheels: Wheels = _shared["wheels"]
    return wheels


def user_python() -> str | None:
    """A system Python of this interpreter's version (the wheels are built for it) that any user can run."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (f"/usr/bin/python{version}", "/usr/bin/python3", f"/usr/local/bin/python{version}"):
        if os.access(candidate, os.X_OK):
            out = subprocess.run(
                [candidate, "-c", "import sys, venv; print(*sys.version_info[:2], sep='.')"],
                capture_output=True,
                text=True,
                timeout=_CMD_TIMEOUT_S,
            )
            if out.returncode == 0 and out.stdout.strip() == version:
                return candidate
    return None


def require_user_python() -> str:
    python = user_python()
    if python is None:
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        reason = f"no system Python {version} with venv (the version running the tests) for the test user"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but there is {reason}.", pytrace=False)
        pytest.skip(reason)
    return python


def shared_remote_python(user: str = TEST_USER) -> str:
    """The python of a virtualenv with glidein that ``user`` owns, made once per test process."""
    key = f"venv-{user}"
    if key not in _shared:
        system_python = require_user_python()
        wheels = shared_wheels()
        account = ensure_user(user)
        base = Path(tempfile.mkdtemp(prefix="glidein-test-venv-"))
        atexit.register(shutil.rmtree, base, True)
        os.chmod(base, 0o755)
        os.chown(base, account.pw_uid, account.pw_gid)
        venv = base / "venv"
        as_user = ["runuser", "-u", user, "--"]
        subprocess.run(
            [*as_user, system_python, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120, cwd="/"
        )
        subprocess.run(
            [
                *as_user,
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "--isolated",
                "install",
                "--quiet",
                "--no-index",
                "--no-deps",
                "--disable-pip-version-check",
                *map(str, wheels.files),
            ],
            check=True,
            capture_output=True,
            timeout=300,
            cwd="/",
        )
        _shared[key] = str(venv / "bin" / "python")
    python: str = _shared[key]
    return python


def skip_reason() -> str | None:
    """Why the real-sshd tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "real-sshd tests need root (the fixture writes a PAM service and starts sshd)"
    missing = missing_pieces()
    if missing:
        return f"missing {', '.join(missing)}: run tests/infra/install_sshd.sh as root"
    return None


def require_sshd() -> None:
    """Skip (or, with CI set, fail) when the real sshd cannot run here."""
    reason = skip_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}.", pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def sshd() -> Iterator[SshServer]:
    """A started sshd (key + TOTP, DISALLOW_REUSE off) for one test."""
    require_sshd()
    with SshServer() as server:
        yield server
