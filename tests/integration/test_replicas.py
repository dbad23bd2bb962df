"""Two `glidein-server serve` replicas on one real PostgreSQL behind a load balancer; one is killed
with SIGKILL mid-run. No job is lost, none runs twice, and the pilots carry on through the other.

The load balancer is a small TCP proxy written here (round-robin per connection, skipping a
backend that refuses), standing in for HAProxy or nginx's stream module in front of the replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobSpec, JobState, PilotShape, Role
from glidein_server.server import mint_token
from glidein_server.settings import ServerSettings, StateDir
from glidein_server.store.postgres import PostgresStore

pytestmark = pytest.mark.slow
JOBS = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoadBalancer:
    """Round-robin TCP proxy: each new connection goes to the next backend that accepts it."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.turn = 0
        self.served: dict[int, int] = dict.fromkeys(backends, 0)
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(len(self.backends)):
            port = self.backends[self.turn % len(self.backends)]
            self.turn += 1
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.served[port] += 1
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            return
        writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def serve(state: StateDir, port: int, log: Path) -> asyncio.subprocess.Process:
    with open(log, "wb") as out:  # noqa: ASYNC230 - handed to the child
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "glidein_server.cli",
            "serve",
            "--dir",
            str(state.root),
            "--port",
            str(port),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return proc
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.1)
    raise AssertionError(f"replica on port {port} did not start: {log.read_text()[-2000:]}")  # noqa: ASYNC240


@contextlib.asynccontextmanager
async def killed_at_exit(procs: list[asyncio.subprocess.Process]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                await p.wait()


async def test_sigkill_of_one_replica_loses_no_job_and_runs_none_twice(tmp_path: Path, postgres_url: str) -> None:
    state = StateDir(tmp_path / "server")
    state.write(
        ServerSettings(
            port=0,
            database=postgres_url,
            lease_s=5.0,
            heartbeat_s=1.0,
            pilot_timeout_s=10.0,
            insecure_http=True,
        )
    )
    store = PostgresStore(postgres_url)
    await store.open()  # creates the schema; the replicas find it current
    user = await mint_token(store, Role.USER, "alice")
    site = await mint_token(store, Role.SITE, "local")
    ports = [free_port(), free_port()]
    marks = tmp_path / "marks"
    marks.mkdir()
    procs: list[asyncio.subprocess.Process] = []
    lb = LoadBalancer(ports)
    async with killed_at_exit(procs):
        procs += [await serve(state, port, tmp_path / f"replica-{port}.log") for port in ports]
        await lb.start()
        url = f"http://127.0.0.1:{lb.port}"
        specs = [
            JobSpec(argv=["/bin/sh", "-c", f"echo ran >> {marks}/{i}; sleep 0.3"], walltime_s=60, max_retries=0)
            for i in range(JOBS)
        ]
        async with ApiClient(url, user) as api:
            ids = await api.submit(specs)
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        for n in range(4):
            async with ApiClient(url, site) as api:
                await api.demand("local", PilotShape(cpus=2, memory_mb=2048, disk_mb=1000, walltime_s=600))
                grant = await api.new_pilot("local")
            token = tmp_path / f"pilot-{n}.token"
            token.write_text(grant.token)
            token.chmod(0o600)
            with open(tmp_path / f"pilot-{n}.log", "wb") as log:  # noqa: ASYNC230 - handed to the child
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *(sys.executable, "-m", "glidein_client.pilot", "run", "--server-url", url),
                        *("--token-file", str(token), "--site", "local", "--cpus", "2", "--memory-mb", "2048"),
                        *("--disk-mb", "1000", "--walltime-s", "600", "--idle-timeout-s", "5"),
                        # No sandbox: each job appends to a shared file, the count of its runs.
                        *("--scratch", str(scratch), "--isolation", "none"),
                        stdout=log,
                        stderr=asyncio.subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        # Kill one replica once work is under way on both.
        deadline = time.monotonic() + 60
        while len(list(marks.iterdir())) < JOBS // 4:
            assert time.monotonic() < deadline, "no progress before the kill"
            await asyncio.sleep(0.1)
        assert all(n > 0 for n in lb.served.values()), lb.served  # both replicas served
        os.killpg(procs[0].pid, signal.SIGKILL)
        await procs[0].wait()
        deadline = time.monotonic() + 90
        while True:
            views = [await store.get_job(i) for i in ids]
            states = [v.state if v else None for v in views]
            if all(s is JobState.DONE for s in states):
                break
            assert time.monotonic() < deadline, f"not all jobs done: {states}"
            await asyncio.sleep(0.5)
        for i in range(JOBS):
            assert (marks / str(i)).read_text() == "ran\n", f"job {i} ran {(marks / str(i)).read_text().count('ran')}x"
        assert procs[1].returncode is None  # the other replica still serves
    lb.close()
    await store.close()
