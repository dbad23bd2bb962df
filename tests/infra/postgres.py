"""A real PostgreSQL server of the tests' own: initdb into a temporary directory, a random port on
127.0.0.1, torn down after.

PostgreSQL refuses to run as root, so when the tests run as root the cluster belongs to an
unprivileged user made for it (``gl-pg-postgres``, removed afterwards); otherwise to the caller.
The binaries come from Debian's ``postgresql`` package (/usr/lib/postgresql/<version>/bin).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER = "gl-pg-postgres"
SUPERUSER = "glidein"


def bindir() -> Path | None:
    """The newest installed PostgreSQL's binaries, or None."""
    root = Path("/usr/lib/postgresql")
    found = sorted(root.glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)) if root.is_dir() else []
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Postgres:
    port: int
    root: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def run(self, tool: str, *args: str) -> None:
        """Run a PostgreSQL client tool (createdb, dropdb, ...) against this server."""
        bins = bindir()
        assert bins is not None
        argv = [str(bins / tool), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, *args]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    return argv if user is None else ["runuser", "-u", user, "--", *argv]


@contextlib.contextmanager
def _owner() -> Iterator[str | None]:
    """The unprivileged user the cluster runs as (None: the caller), made and removed when root."""
    if os.geteuid() != 0:
        yield None
        return
    made = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
            capture_output=True,
        )
        made = True
    try:
        yield USER
    finally:
        if made:
            subprocess.run(["userdel", USER], check=False, capture_output=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """Start a throw-away PostgreSQL cluster; stop it and delete its files on exit."""
    bins = bindir()
    if bins is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    with _owner() as user, tempfile.TemporaryDirectory(prefix="glidein-pg-") as tmp:
        root = Path(tmp)
        data = root / "data"
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chmod(root, 0o700)
        subprocess.run(
            _as_user(
                user,
                [str(bins / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"],
            ),
            check=True,
            capture_output=True,
        )
        port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            _as_user(
                user, [str(bins / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )
        try:
            deadline = time.monotonic() + 30
            while subprocess.run(
                [str(bins / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            ).returncode:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {(root / 'log').read_text()[-2000:]}")
                time.sleep(0.1)
            yield Postgres(port=port, root=root)
        finally:
            subprocess.run(
                _as_user(user, [str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                check=False,
                capture_output=True,
            )
            shutil.rmtree(data, ignore_errors=True)
