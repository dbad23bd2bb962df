"""A site whose pilots must trust the server's private CA (``glidein-server init``'s default) that
nobody copied to the cluster by hand.

The server runs HTTPS with its own CA; the CA file lives in the operator's private (0700) state
directory, which the login node's user cannot read. Both ways of running a site are driven for
real: remote mode (this host's client over a REAL sshd with key + TOTP, pilots under a REAL Slurm)
and a deployed client (``glidein-client deploy``, then its cron command run on the login node).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from glidein_client.site.client import SiteClient
from glidein_client.site.config import SiteConfig, load_site_config, tomllib
from glidein_client.site.deploy import deploy
from glidein_client.site.deploy_config import _toml
from glidein_client.site.runners.ssh import SshRunner
from glidein_client.wire.schema import JobSpec, JobState, Role
from glidein_server.cli import _dispatch, _parser
from glidein_server.server import Server
from tests.conftest import LiveServer
from tests.infra import slurm as slurm_infra
from tests.infra import sshd as sshd_infra
from tests.infra.slurm import SlurmCluster
from tests.infra.sshd import TEST_USER, SshServer

pytestmark = [pytest.mark.sshd, pytest.mark.slurm]
slurm_cluster = slurm_infra.slurm_cluster


@pytest.fixture
async def https_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[LiveServer]:
    """`glidein-server init` (private CA, HTTPS) in a 0700 directory the login node's user cannot read."""
    root = tmp_path / "operator" / "server"
    root.parent.mkdir(mode=0o700)
    assert await _dispatch(_parser().parse_args(["init", str(root), "--port", "0", "--json"])) == 0
    out = json.loads(capsys.readouterr().out)
    async with Server(str(root)) as srv:
        yield LiveServer(srv.url, root, out["operator_token"], srv, tmp_path, ca_file=out["ca_file"])


@pytest.fixture
def login_node(slurm_cluster: SlurmCluster) -> Iterator[SshServer]:
    sshd_infra.require_sshd()
    sshd_infra.shared_remote_python()
    with SshServer(setenv=slurm_cluster.env) as server:
        yield server
    slurm_cluster.run(["scancel", "--user", TEST_USER])


async def write_site(live: LiveServer, server: SshServer, tmp_path: Path, **extra: Any) -> SiteConfig:
    name = f"ca{uuid.uuid4().hex[:8]}"
    token = await live.token(Role.SITE, name)
    raw = {
        "site": {
            "name": name,
            "server_url": live.url,
            "token_file": str(live.write_secret(f"{name}.token", token)),
            "ca_file": live.ca_file,
            "scheduler": "slurm",
            "scratch_dir": str(server.user_dir / "scratch"),
            "cycle_s": 1.0,
        },
        "pilot": {"cpus": 1, "memory": "256M", "disk": "100M", "walltime": "10m", "idle_timeout": "3s"},
        "limits": {"max_pilots": 1, "max_idle_pilots": 1, "max_submit_per_cycle": 1},
        "batch": {"python": sshd_infra.shared_remote_python()},
        "ssh": server.ssh_section(**extra),
    }
    path = tmp_path / f"{name}.toml"
    path.write_text(_toml(raw))
    return load_site_config(path)


async def submit(live: LiveServer, text: str) -> int:
    async with live.api(await live.token(Role.USER, "alice")) as api:
        [job] = await api.submit([JobSpec(argv=["echo", text], cpus=1, memory_mb=64, disk_mb=10, walltime_s=60)])
    return job


async def wait_done(live: LiveServer, job: int, timeout_s: float, tick: Any = None) -> JobState:
    deadline = time.monotonic() + timeout_s
    async with live.api(live.operator_token) as api:
        while True:
            state = (await api.get_job(job)).state
            if state in (JobState.DONE, JobState.FAILED) or time.monotonic() > deadline:
                return state
            if tick is not None:
                await tick()
            await asyncio.sleep(0.5)


async def test_remote_mode_pilots_trust_a_private_ca_they_were_never_given(
    https_server: LiveServer, login_node: SshServer, tmp_path: Path
) -> None:
    live = https_server
    assert live.ca_file is not None
    ca = await asyncio.to_thread(Path(live.ca_file).read_bytes)
    site = await write_site(live, login_node, tmp_path)
    # the CA named in the config is out of the SSH user's reach: only a copy can help the pilots
    probe = await asyncio.create_subprocess_exec(
        "runuser", "-u", TEST_USER, "--", "cat", live.ca_file, stdout=asyncio.subprocess.DEVNULL
    )
    assert await probe.wait() != 0
    job = await submit(live, "trusted")
    async with SiteClient(site) as client:
        assert isinstance(client.runner, SshRunner)
        state = await wait_done(live, job, 90, tick=client.cycle)
    assert state is JobState.DONE
    copies = list((login_node.user_dir / "scratch" / "pilots-meta").glob(f"glidein-{site.name}-*/ca.pem"))
    assert copies and all(c.read_bytes() == ca and c.owner() == TEST_USER for c in copies)


@pytest.mark.slow
async def test_deploy_carries_the_ca_and_a_renewed_one(
    https_server: LiveServer, login_node: SshServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    live = https_server
    assert live.ca_file is not None
    remote = login_node.user_dir / "glidein"
    site = await write_site(
        live,
        login_node,
        tmp_path,
        remote_dir=str(remote),
        cron_minutes=10,
        remote_python=sshd_infra.require_user_python(),
    )
    assert site.ssh is not None
    wheels = sshd_infra.shared_wheels()
    async with SshRunner(site.ssh, config_path=site.path) as runner:
        first = await deploy(site, runner=runner, wheels=wheels)
        assert "ca" in [s.name for s in first.steps if s.changed]
        copy = remote / "ca.pem"
        assert copy.read_bytes() == await asyncio.to_thread(Path(live.ca_file).read_bytes)
        assert copy.owner() == TEST_USER
        config = tomllib.loads((remote / "site.toml").read_text())
        assert config["site"]["ca_file"] == str(copy)

        # the deployed client, on the login node, submits a pilot that reaches the server over HTTPS
        job = await submit(live, "deployed")
        crontab = (await runner.run(["crontab", "-l"])).stdout.splitlines()
        line = crontab[crontab.index(f"# glidein-client deploy: site {site.name} in {remote}") + 1]
        ran = await runner.run(["sh", "-c", line.split(" ", 5)[5].replace("\\%", "%")], timeout_s=120)
        assert ran.returncode == 0, ran
        assert await wait_done(live, job, 60) is JobState.DONE, (remote / "cron.log").read_text()

        # a new CA (`glidein-server tls renew` after the old CA key was retired) travels with the next deploy
        os.unlink(live.state_dir / "tls" / "ca.key")
        assert await _dispatch(_parser().parse_args(["tls", "renew", "--dir", str(live.state_dir), "--json"])) == 0
        capsys.readouterr()
        again = await deploy(site, runner=runner, wheels=wheels)
        assert [s.name for s in again.steps if s.changed] == ["ca"]
        assert copy.read_bytes() == await asyncio.to_thread(Path(live.ca_file).read_bytes)
    cleanup = await asyncio.create_subprocess_exec("crontab", "-r", "-u", TEST_USER)
    await cleanup.wait()
