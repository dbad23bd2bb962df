"""Shared fixtures: a real glidein server (in-process aiohttp + SQLite) and real pilot processes."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
import pytest

from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import PilotShape, Role
from glidein_server import totp
from glidein_server.server import Server, mint_token
from glidein_server.settings import ServerSettings, StateDir
from tests.infra.postgres import Postgres, bindir, running_postgres

_DATABASES = itertools.count()
REPO = Path(__file__).resolve().parent.parent


@dataclass
class LiveServer:
    url: str
    state_dir: Path
    operator_token: str
    server: Server
    tmp: Path
    pilots: list[asyncio.subprocess.Process] = field(default_factory=list)
    ca_file: str | None = None  # the server's CA, when it serves HTTPS
    totp_secret: str = ""  # set by enable_totp

    async def enable_totp(self, subject: str = "operator") -> Callable[[], str]:
        """Enrol ``subject`` for one-time codes; returns a function giving a fresh code per call.

        The server's TOTP clock is replaced by one that moves a 30-second step per code, so
        tests need not wait for the next code (each code is accepted once).
        """
        api = self.server.api
        assert api is not None
        key = totp.load_or_create_key(self.state_dir / "totp.key")
        secret, _ = await totp.enrol(self.server.store, key, subject)
        self.totp_secret = secret
        guard = api.admin.totp
        guard.key = key
        clock = [time.time()]
        guard.clock = lambda: clock[0]

        def code() -> str:
            clock[0] += totp.STEP_S
            return pyotp.TOTP(secret).at(clock[0])

        return code

    async def token(self, role: Role, subject: str) -> str:
        return await mint_token(self.server.store, role, subject)

    def write_secret(self, name: str, secret: str) -> Path:
        path = self.tmp / name
        path.write_text(secret + "\n")
        path.chmod(0o600)
        return path

    def api(self, token: str) -> ApiClient:
        return ApiClient(self.url, token, ca_file=self.ca_file)

    async def start_pilot(
        self,
        *,
        site: str = "local",
        cpus: int = 2,
        memory_mb: int = 2048,
        disk_mb: int = 1000,
        walltime_s: int = 600,
        idle_timeout_s: float = 5.0,
        shape: PilotShape | None = None,
        extra: tuple[str, ...] = (),
    ) -> asyncio.subprocess.Process:
        """Start a real pilot process for ``site`` (its site token is minted on the fly)."""
        site_token = await self.token(Role.SITE, site)
        async with self.api(site_token) as api:
            await api.demand(
                site, shape or PilotShape(cpus=cpus, memory_mb=memory_mb, disk_mb=disk_mb, walltime_s=walltime_s)
            )
            grant = await api.new_pilot(site)
        token_file = self.write_secret(f"pilot-{grant.pilot_id}.token", grant.token)
        scratch = self.tmp / "scratch"
        scratch.mkdir(exist_ok=True)
        log = open(self.tmp / f"pilot-{grant.pilot_id}.log", "wb")  # noqa: ASYNC230 - handed to the child
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "glidein_client.pilot",
            "run",
            "--server-url",
            self.url,
            "--token-file",
            str(token_file),
            "--site",
            site,
            "--cpus",
            str(cpus),
            "--memory-mb",
            str(memory_mb),
            "--disk-mb",
            str(disk_mb),
            "--walltime-s",
            str(walltime_s),
            "--idle-timeout-s",
            str(idle_timeout_s),
            "--scratch",
            str(scratch),
            *(("--ca-file", self.ca_file) if self.ca_file else ()),
            *extra,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.pilots.append(proc)
        return proc

    def pilot_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("pilot-*.log")))


@pytest.fixture
async def live_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    state = StateDir(tmp_path / "server")
    # Plain HTTP on loopback keeps the fixture fast; tests/integration/test_tls.py covers HTTPS.
    state.write(ServerSettings(port=0, lease_s=5.0, heartbeat_s=1.0, pilot_timeout_s=10.0, insecure_http=True))
    srv = Server(str(state.root))
    async with srv:
        op = await mint_token(srv.store, Role.OPERATOR, "operator")
        live = LiveServer(url=srv.url, state_dir=state.root, operator_token=op, server=srv, tmp=tmp_path)
        try:
            yield live
        finally:
            for proc in live.pilots:
                if proc.returncode is None:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    await proc.wait()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    """A real PostgreSQL of the tests' own (tests/infra/postgres.py), started once per session."""
    if bindir() is None:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql (see .ci/run)")
    with running_postgres() as pg:
        yield pg


@pytest.fixture
def postgres_url(postgres_server: Postgres) -> Iterator[str]:
    """The URL of a fresh, empty database on the tests' PostgreSQL, dropped after the test."""
    name = f"t_{os.getpid()}_{next(_DATABASES)}"
    postgres_server.run("createdb", name)
    yield postgres_server.url(name)
    postgres_server.run("dropdb", "--force", name)
