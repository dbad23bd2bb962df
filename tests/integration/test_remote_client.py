"""Remote mode for real: the site client drives a login node through a REAL sshd (key + TOTP)
whose sessions reach a REAL Slurm (``SetEnv SLURM_CONF``). Pilots run under Slurm as the SSH
user, on this machine, and reach the in-process server over loopback.

Logins are counted in sshd's log (tests/infra/sshd.py); pilots in ``squeue``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from glidein_client.site.client import SiteClient
from glidein_client.site.config import SiteConfig, load_site_config
from glidein_client.site.deploy_config import _toml
from glidein_client.site.runners.local import CommandResult
from glidein_client.site.runners.ssh import SshRunner
from glidein_client.wire.schema import JobSpec, JobState, Role
from tests.conftest import LiveServer
from tests.infra import slurm as slurm_infra
from tests.infra import sshd as sshd_infra
from tests.infra.slurm import SlurmCluster
from tests.infra.sshd import TEST_USER, SshServer

pytestmark = [pytest.mark.sshd, pytest.mark.slurm]
slurm_cluster = slurm_infra.slurm_cluster


@pytest.fixture
def remote(slurm_cluster: SlurmCluster) -> Iterator[SshServer]:
    """A login node: sshd whose sessions use the test Slurm cluster."""
    sshd_infra.require_sshd()
    sshd_infra.shared_remote_python()  # the pilots' Python, built before the clock of a test runs
    with SshServer(setenv=slurm_cluster.env) as server:
        yield server
    slurm_cluster.run(["scancel", "--user", TEST_USER])


@pytest.fixture
def login_node(slurm_cluster: SlurmCluster) -> Iterator[SshServer]:
    """Like ``remote``, with DISALLOW_REUSE: a code is accepted once only."""
    sshd_infra.require_sshd()
    sshd_infra.shared_remote_python()
    with SshServer(setenv=slurm_cluster.env, disallow_reuse=True) as server:
        yield server
    slurm_cluster.run(["scancel", "--user", TEST_USER])


async def remote_site(
    live: LiveServer,
    server: SshServer,
    tmp_path: Path,
    *,
    ssh: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
) -> SiteConfig:
    name = f"r{uuid.uuid4().hex[:8]}"
    token = live.write_secret("site.token", await live.token(Role.SITE, name))
    raw = {
        "site": {
            "name": name,
            "server_url": live.url,
            "token_file": str(token),
            "scheduler": "slurm",
            "scratch_dir": str(server.user_dir / "scratch"),
            "cycle_s": 1.0,
        },
        "pilot": {"cpus": 1, "memory": "256M", "disk": "100M", "walltime": "10m", "idle_timeout": "3s"},
        "limits": {"max_pilots": 2, "max_idle_pilots": 2, "max_submit_per_cycle": 2, **(limits or {})},
        "batch": {"python": sshd_infra.shared_remote_python()},
        "ssh": server.ssh_section(**(ssh or {})),
    }
    path = tmp_path / "remote.toml"
    path.write_text(_toml(raw))
    return load_site_config(path)


async def submit_jobs(live: LiveServer, n: int, argv: list[str]) -> list[int]:
    async with live.api(await live.token(Role.USER, "alice")) as api:
        return await api.submit([JobSpec(argv=argv, cpus=1, memory_mb=64, disk_mb=10, walltime_s=120)] * n)


async def job_states(live: LiveServer, ids: list[int]) -> dict[int, JobState]:
    async with live.api(live.operator_token) as api:
        return {j.id: j.state for j in (await api.list_jobs(ids=ids)).jobs}


def pilots_in_state(cluster: SlurmCluster, site: SiteConfig, state: str) -> list[str]:
    """Job names of this site's pilots in one Slurm state (e.g. PENDING)."""
    argv = ["squeue", f"--states={state}", "--noheader", "--format=%j", f"--user={TEST_USER}"]
    return [name for name in cluster.run(argv).stdout.split() if name.startswith(f"glidein-{site.name}-")]


def site_pilots(cluster: SlurmCluster, site: SiteConfig) -> list[str]:
    """Job names of this site's pilots that Slurm knows (any state)."""
    out = cluster.run(["squeue", "--states=all", "--noheader", "--format=%j", f"--user={TEST_USER}"]).stdout
    return [name for name in out.split() if name.startswith(f"glidein-{site.name}-")]


async def test_remote_client_submits_pilots_over_ssh_and_jobs_finish(
    live_server: LiveServer, remote: SshServer, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    site = await remote_site(live_server, remote, tmp_path)
    ids = await submit_jobs(live_server, 3, ["sh", "-c", "echo hello from $(id -un)"])
    submitted: list[str] = []
    async with SiteClient(site) as client:  # the runner comes from [ssh]
        assert isinstance(client.runner, SshRunner)
        deadline = time.monotonic() + 90
        while True:
            report = await client.cycle()
            submitted += report.submitted
            states = await job_states(live_server, ids)
            if all(s is JobState.DONE for s in states.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        runner = client.runner
        assert runner.logins == 1
        pilot_dirs = [d for d in (remote.user_dir / "scratch" / "pilots-meta").glob("glidein-*") if d.is_dir()]
    assert states == {i: JobState.DONE for i in ids}, states
    assert 1 <= len(submitted) <= 2
    assert sorted(site_pilots(slurm_cluster, site)) == sorted(
        f"glidein-{site.name}-{p.name.rsplit('-', 1)[1]}" for p in pilot_dirs
    )
    pending = set(pilots_in_state(slurm_cluster, site, "PENDING"))  # a second pilot may still wait in the queue
    for pilot_dir in pilot_dirs:  # written over SFTP as the SSH user, for it only
        assert pilot_dir.stat().st_mode & 0o777 == 0o700 and pilot_dir.owner() == TEST_USER
        if f"glidein-{site.name}-{pilot_dir.name.rsplit('-', 1)[1]}" in pending:
            continue  # not started: its token waits for it
        for _ in range(50):  # each pilot removes its token once it has read it, right at its start
            if not (pilot_dir / "token").exists():
                break
            await asyncio.sleep(0.2)
        assert not (pilot_dir / "token").exists()
    async with live_server.api(live_server.operator_token) as api:
        outputs = [(await api.attempts(i))[-1].stdout_tail for i in ids]
    assert outputs == [f"hello from {TEST_USER}\n"] * 3  # the jobs ran as the SSH user, under Slurm
    assert remote.logins() == 1 and remote.failed_codes() == 0  # one login served every cycle


@pytest.mark.slow
async def test_connection_killed_mid_cycle_is_reestablished_without_duplicate_pilots(
    live_server: LiveServer,
    login_node: SshServer,
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="glidein_client")
    site = await remote_site(live_server, login_node, tmp_path)
    assert site.ssh is not None
    await submit_jobs(live_server, 2, ["sleep", "2"])

    class KillAfterFirstStatus(SshRunner):
        """A real SSH runner whose connection is killed (sshd's session processes) after the first squeue."""

        killed = False

        async def run(self, argv: list[str], **kwargs: Any) -> CommandResult:
            result = await super().run(argv, **kwargs)
            if argv[0] == "squeue" and not self.killed:
                self.killed = True
                assert login_node.kill_sessions() > 0
                for _ in range(100):  # until this side has seen the connection go
                    if not self.connected:
                        break
                    await asyncio.sleep(0.02)
            return result

    runner = KillAfterFirstStatus(site.ssh, config_path=site.path)
    async with runner, SiteClient(site, runner=runner) as client:
        first = await client.cycle()  # squeue, [connection killed], new pilots (SFTP, sbatch)
        assert runner.killed
        assert len(first.submitted) == 2, first
        after_first = site_pilots(slurm_cluster, site)
        second = await client.cycle()
    # each grant was submitted exactly once: as many pilots as reported, each with its own id
    assert len(after_first) == 2 and len(set(after_first)) == 2
    assert second.submitted == ()
    assert sorted(site_pilots(slurm_cluster, site)) == sorted(after_first)
    # the connection came back with one more login, which waited for a fresh code instead of failing
    assert login_node.logins() == 2 and login_node.failed_codes() == 0
    assert runner.logins == 2
    assert any("connection to" in r.getMessage() and "was lost" in r.getMessage() for r in caplog.records)


async def test_wrong_code_gives_a_clear_error_and_no_retry_storm(
    live_server: LiveServer, remote: SshServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = tmp_path / "wrong.totp"
    wrong.write_text(pyotp.random_base32() + "\n")
    wrong.chmod(0o600)
    site = await remote_site(live_server, remote, tmp_path, ssh={"totp_secret_file": str(wrong)})
    caplog.set_level(logging.INFO, logger="glidein_client")
    async with SiteClient(site) as client:  # daemon mode, a cycle a second, for 5 s
        stop = asyncio.Event()
        task = asyncio.create_task(client.run_forever(stop=stop))
        await asyncio.sleep(5)
        stop.set()
        await asyncio.wait_for(task, 30)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and site.name in r.getMessage()]
    assert len(errors) >= 3, errors  # the cycles went on ...
    assert "refused the one-time code (the key was accepted)" in errors[0]
    assert str(wrong) in errors[0]
    assert all("Not logging in to" in e for e in errors[1:]), errors
    # ... but the login node saw one login attempt with one code
    assert (remote.connections(), remote.failed_codes(at_least=1), remote.logins()) == (1, 1, 0)


async def test_daemon_keeps_one_login(
    live_server: LiveServer, remote: SshServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = await remote_site(live_server, remote, tmp_path)
    caplog.set_level(logging.INFO, logger="glidein_client.site.client")
    async with SiteClient(site) as client:
        stop = asyncio.Event()
        task = asyncio.create_task(client.run_forever(stop=stop))
        await asyncio.sleep(4)
        stop.set()
        await asyncio.wait_for(task, 30)
    cycles = [r for r in caplog.records if f"site {site.name}: demand" in r.getMessage()]
    assert len(cycles) >= 3
    assert remote.logins() == 1 and remote.connections() == 1
