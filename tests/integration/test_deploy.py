"""`glidein-client deploy` for real: over a REAL sshd (key + TOTP) into the test user's account,
then the crontab line it installed runs a cycle there against a REAL Slurm (its command is run
over SSH directly; no cron daemon is needed for that).

A systemd user instance cannot run here (no systemd as PID 1): the ``service = "systemd"`` tests
drive a fake ``systemctl --user``/``loginctl`` that answers as systemd 252 (Debian 12) does and
really runs the unit's ExecStart (tests/fakes/fakesystemd.py); the refusal where a login node has
no user instance meets the real ``systemctl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from glidein_client.site.config import SiteConfig, load_site_config, tomllib
from glidein_client.site.deploy import deploy
from glidein_client.site.deploy_config import _toml
from glidein_client.site.runners.ssh import SshRunner
from glidein_client.wire.errors import ConfigError
from glidein_client.wire.schema import JobSpec, JobState, Role
from tests.conftest import LiveServer
from tests.infra import slurm as slurm_infra
from tests.infra import sshd as sshd_infra
from tests.infra.slurm import SlurmCluster
from tests.infra.sshd import TEST_USER, SshServer

pytestmark = [pytest.mark.sshd, pytest.mark.slurm]
slurm_cluster = slurm_infra.slurm_cluster


@pytest.fixture
def login_node(slurm_cluster: SlurmCluster) -> Iterator[SshServer]:
    """sshd whose sessions use the test Slurm; the test user's crontab is removed afterwards."""
    sshd_infra.require_sshd()
    sshd_infra.shared_wheels()  # built once per test process
    with SshServer(setenv=slurm_cluster.env) as server:
        yield server
    subprocess.run(["crontab", "-r", "-u", TEST_USER], capture_output=True, timeout=30)
    slurm_cluster.run(["scancel", "--user", TEST_USER])


async def site_config(live: LiveServer, server: SshServer, tmp_path: Path) -> SiteConfig:
    name = f"d{uuid.uuid4().hex[:8]}"
    token = live.write_secret("site.token", await live.token(Role.SITE, name))
    remote_dir = server.user_dir / "glidein"
    raw = {
        "site": {
            "name": name,
            "server_url": live.url,
            "token_file": str(token),
            "scheduler": "slurm",
            "scratch_dir": str(server.user_dir / "scratch"),
            "cycle_s": 30.0,
        },
        "pilot": {"cpus": 1, "memory": "256M", "disk": "100M", "walltime": "10m", "idle_timeout": "3s"},
        "batch": {"python": str(remote_dir / "venv" / "bin" / "python")},
        "ssh": server.ssh_section(
            remote_dir=str(remote_dir), cron_minutes=10, remote_python=sshd_infra.require_user_python()
        ),
    }
    path = tmp_path / "site.toml"
    path.write_text(_toml(raw))
    return load_site_config(path)


def edit_config(site: SiteConfig, old: str, new: str) -> SiteConfig:
    path = Path(site.path)
    path.write_text(path.read_text().replace(old, new))
    return load_site_config(path)


def snapshot(server: SshServer) -> dict[str, Any]:
    """What deploy may change on the login node: files under the user's dir, and the crontab."""
    files = {
        str(p): (p.stat().st_mtime_ns, p.stat().st_mode) for p in server.user_dir.rglob("*") if "venv" not in p.parts
    }
    crontab = subprocess.run(["crontab", "-l", "-u", TEST_USER], capture_output=True, text=True, timeout=30)
    return {"files": files, "crontab": crontab.stdout}


async def test_deploy_then_the_cron_command_runs_a_cycle(
    live_server: LiveServer, login_node: SshServer, tmp_path: Path
) -> None:
    site = await site_config(live_server, login_node, tmp_path)
    remote = login_node.user_dir / "glidein"
    wheels = sshd_infra.shared_wheels()
    assert site.ssh is not None
    async with SshRunner(site.ssh, config_path=site.path) as runner:  # one login for everything below
        before = await asyncio.to_thread(snapshot, login_node)
        dry = await deploy(site, runner=runner, wheels=wheels, dry_run=True)
        assert dry.changed and dry.dry_run
        assert [s.name for s in dry.steps if s.changed] == [
            "dir",
            "wheels",
            "venv",
            "install",
            "config",
            "token",
            "crontab",
        ]
        assert all(s.text.startswith("would") for s in dry.steps if s.changed)
        assert "nothing was changed" in dry.text()
        assert await asyncio.to_thread(snapshot, login_node) == before  # --dry-run changes nothing

        first = await deploy(site, runner=runner, wheels=wheels)
        assert first.changed and first.remote_dir == str(remote)
        assert "done: 7 step(s) changed something" in first.text()

        # what is there: the token (0600), the config without [ssh], a venv with glidein, the crontab line
        token = remote / "site.token"
        assert token.read_text().strip() == site.read_token()
        assert token.stat().st_mode & 0o777 == 0o600 and token.owner() == TEST_USER
        config = tomllib.loads((remote / "site.toml").read_text())
        assert "ssh" not in config and config["site"]["token_file"] == str(token)
        assert (remote / "venv" / "bin" / "glidein-client").exists()
        assert json.loads((remote / "deployed.json").read_text())["fingerprint"] == wheels.fingerprint
        crontab = (await runner.run(["crontab", "-l"])).stdout.splitlines()
        marker = f"# glidein-client deploy: site {site.name} in {remote}"
        line = crontab[crontab.index(marker) + 1]
        assert line.startswith("*/10 * * * * ")

        again = await deploy(site, runner=runner, wheels=wheels)  # a second run changes nothing ...
        assert not again.changed
        assert again.text().endswith("nothing to change: this deployment is up to date")  # ... and says so
        unchanged = await asyncio.to_thread(snapshot, login_node)
        assert not (await deploy(site, runner=runner, wheels=wheels, dry_run=True)).changed
        assert await asyncio.to_thread(snapshot, login_node) == unchanged

        # a changed config is an update of that one file
        site = await asyncio.to_thread(edit_config, site, "cycle_s = 30.0", "cycle_s = 45.0")
        update = await deploy(site, runner=runner, wheels=wheels)
        assert [s.name for s in update.steps if s.changed] == ["config"]
        assert (await runner.run(["crontab", "-l"])).stdout.count("glidein-client deploy") == 1

        # the deployed cron command runs a cycle on the login node: it submits a pilot, which runs the job
        async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
            [job] = await api.submit(
                [JobSpec(argv=["sh", "-c", "echo deployed"], cpus=1, memory_mb=64, disk_mb=10, walltime_s=60)]
            )
        command = line.split(" ", 5)[5].replace("\\%", "%")
        ran = await runner.run(["sh", "-c", command], timeout_s=120)
        assert ran.returncode == 0, ran
        log = (remote / "cron.log").read_text()
        assert f"site {site.name}: demand 1 pilot(s)" in log and "submitted 1:" in log, log
        state = await wait_for_job(live_server, job, 60)
        assert state is JobState.DONE
    assert login_node.logins() == 1  # dry runs, deploys and the cron command: one login


async def wait_for_job(live: LiveServer, job: int, timeout_s: float) -> JobState:
    deadline = time.monotonic() + timeout_s
    async with live.api(live.operator_token) as api:
        while True:
            state = (await api.get_job(job)).state
            if state in (JobState.DONE, JobState.FAILED) or time.monotonic() > deadline:
                return state
            await asyncio.sleep(0.5)


async def test_cli_dry_run_shows_the_steps_and_changes_nothing(
    live_server: LiveServer, login_node: SshServer, tmp_path: Path
) -> None:
    site = await site_config(live_server, login_node, tmp_path)
    before = await asyncio.to_thread(snapshot, login_node)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "glidein_client.site.cli",
        "deploy",
        site.path,
        "--dry-run",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert text.startswith(f"deploy to {TEST_USER}@{login_node.host}:{login_node.port}, in ")
    assert "-- dry run" in text
    for step in ("would create", "would copy", "would install", "would write", "would add"):
        assert step in text, text
    assert "nothing was changed" in text
    assert await asyncio.to_thread(snapshot, login_node) == before
    assert login_node.logins() == 1


async def test_a_remote_python_that_does_not_run_names_the_key(
    live_server: LiveServer, login_node: SshServer, tmp_path: Path
) -> None:
    site = await site_config(live_server, login_node, tmp_path)
    site = await asyncio.to_thread(edit_config, site, 'remote_python = "', 'remote_python = "/no/python3.99" # "')
    assert site.ssh is not None and site.ssh.remote_python == "/no/python3.99"
    with pytest.raises(ConfigError) as info:
        await deploy(site, wheels=sshd_infra.shared_wheels())
    assert "'/no/python3.99' (ssh.remote_python in" in info.value.message
    assert info.value.fields["field"] == "ssh.remote_python"
    assert not (login_node.user_dir / "glidein").exists()  # nothing was changed


SYSTEMD_FAKES = Path(__file__).resolve().parents[1] / "fakes" / "systemd-bin"


@pytest.fixture
def systemd_login_node(slurm_cluster: SlurmCluster) -> Iterator[SshServer]:
    """sshd whose sessions find the fake systemd 252 user manager (tests/fakes/fakesystemd.py) first on
    PATH; afterwards its services are stopped and its units, state and the crontab removed."""
    sshd_infra.require_sshd()
    sshd_infra.shared_wheels()
    home = Path(sshd_infra.ensure_user(TEST_USER).pw_dir)
    env = {**slurm_cluster.env, "PATH": f"{SYSTEMD_FAKES}:/usr/local/bin:/usr/bin:/bin"}
    try:
        with SshServer(setenv=env) as server:
            yield server
    finally:
        for pid_file in (home / ".local" / "state" / "fake-systemd").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        for path in (home / ".config" / "systemd", home / ".local" / "state" / "fake-systemd"):
            shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["crontab", "-r", "-u", TEST_USER], capture_output=True, timeout=30)
        slurm_cluster.run(["scancel", "--user", TEST_USER])


def service_starts(home: Path) -> list[dict[str, Any]]:
    path = home / ".local" / "state" / "fake-systemd" / "starts.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_deploy_as_a_systemd_user_service_that_runs_the_daemon(
    live_server: LiveServer, systemd_login_node: SshServer, tmp_path: Path
) -> None:
    server = systemd_login_node
    home = Path(sshd_infra.ensure_user(TEST_USER).pw_dir)
    site = await site_config(live_server, server, tmp_path)
    site = await asyncio.to_thread(edit_config, site, "cron_minutes = 10", 'cron_minutes = 10\nservice = "systemd"')
    remote = server.user_dir / "glidein"
    unit = home / ".config" / "systemd" / "user" / f"glidein-client-{site.name}.service"
    wheels = sshd_infra.shared_wheels()
    assert site.ssh is not None and site.ssh.service == "systemd"
    async with SshRunner(site.ssh, config_path=site.path) as runner:
        await runner.run(
            ["crontab", "-"],
            stdin=f"# glidein-client deploy: site {site.name} in {remote}\n"
            "*/5 * * * * an older cron deployment\n# someone else's line\n".encode(),
        )
        dry = await deploy(site, runner=runner, wheels=wheels, dry_run=True)
        assert [s.name for s in dry.steps if s.changed][-2:] == ["crontab", "service"]
        assert not unit.exists() and service_starts(home) == []

        first = await deploy(site, runner=runner, wheels=wheels)
        changed = {s.name: s.text for s in first.steps if s.changed}
        assert changed["crontab"].startswith("removed: ") and "service" in changed, first.text()
        assert changed["service"] == (
            f"wrote {unit}; enabled glidein-client-{site.name}.service; started glidein-client-{site.name}.service"
        )
        assert (await runner.run(["crontab", "-l"])).stdout == "# someone else's line\n"  # ours went, theirs stays
        text = unit.read_text()
        assert f'ExecStart="{remote}/venv/bin/glidein-client" "run" "{remote}/site.toml"' in text
        assert "Restart=on-failure" in text and "WantedBy=default.target" in text
        [started] = service_starts(home)
        assert started["argv"] == [f"{remote}/venv/bin/glidein-client", "run", f"{remote}/site.toml"]

        # The daemon the unit runs answers new work: it submits a pilot to Slurm, which runs the job.
        async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
            [job] = await api.submit(
                [JobSpec(argv=["sh", "-c", "echo by systemd"], cpus=1, memory_mb=64, disk_mb=10, walltime_s=60)]
            )
        assert await wait_for_job(live_server, job, 90) is JobState.DONE

        again = await deploy(site, runner=runner, wheels=wheels)  # nothing to do, and the daemon keeps running
        assert not again.changed, again.text()
        assert len(service_starts(home)) == 1

        site = await asyncio.to_thread(edit_config, site, "cycle_s = 30.0", "cycle_s = 45.0")
        update = await deploy(site, runner=runner, wheels=wheels)  # a new config restarts the daemon
        assert [s.name for s in update.steps if s.changed] == ["config", "service"]
        assert [s.text for s in update.steps if s.name == "service"] == [
            f"restarted glidein-client-{site.name}.service"
        ]
        assert len(service_starts(home)) == 2

        site = await asyncio.to_thread(edit_config, site, 'service = "systemd"', 'service = "cron"')
        back = await deploy(site, runner=runner, wheels=wheels)  # back to cron: the unit goes
        assert [s.name for s in back.steps if s.changed] == ["crontab", "service"]
        assert not unit.exists()
        assert (await runner.run(["systemctl", "--user", "is-active", unit.name])).stdout.strip() == "inactive"
        assert "glidein-client deploy: site" in (await runner.run(["crontab", "-l"])).stdout
    assert server.logins() == 1


async def test_systemd_where_the_login_node_has_no_user_instance_names_the_key(
    live_server: LiveServer, login_node: SshServer, tmp_path: Path
) -> None:
    # The real systemctl (or none): no systemd runs as PID 1 here, as on many login nodes.
    site = await site_config(live_server, login_node, tmp_path)
    site = await asyncio.to_thread(edit_config, site, "cron_minutes = 10", 'cron_minutes = 10\nservice = "systemd"')
    with pytest.raises(ConfigError) as info:
        await deploy(site, wheels=sshd_infra.shared_wheels())
    assert "gives this user no systemd user instance (systemctl --user: " in info.value.message
    assert info.value.fields["field"] == "ssh.service"
    assert 'ssh.service = "cron"' in (info.value.hint or "")
    assert not (login_node.user_dir / "glidein").exists()  # nothing was changed


async def test_systemd_without_lingering_is_refused_before_anything_changes(
    live_server: LiveServer, slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    sshd_infra.require_sshd()
    env = {**slurm_cluster.env, "PATH": f"{SYSTEMD_FAKES}:/usr/local/bin:/usr/bin:/bin", "FAKE_SYSTEMD_LINGER": "no"}
    with SshServer(setenv=env) as server:
        site = await site_config(live_server, server, tmp_path)
        site = await asyncio.to_thread(edit_config, site, "cron_minutes = 10", 'cron_minutes = 10\nservice = "systemd"')
        with pytest.raises(ConfigError) as info:
            await deploy(site, wheels=sshd_infra.shared_wheels())
        assert info.value.message.startswith(f"Lingering is off for {TEST_USER} on ")
        assert f"loginctl enable-linger {TEST_USER}" in (info.value.hint or "")
        assert not (server.user_dir / "glidein").exists()
