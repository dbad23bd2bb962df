"""Config-borne secrets that cannot be used get a plain message naming the file and the fix, from the
real `glidein-client` command against a REAL sshd with key + TOTP login (never a traceback, and no
code is sent: a login with a secret that pyotp refuses must not even be tried)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from glidein_client.site.deploy_config import _toml
from glidein_client.wire.schema import Role
from tests.conftest import LiveServer
from tests.infra import sshd as sshd_infra
from tests.infra.sshd import SshServer

pytestmark = [pytest.mark.sshd]


@pytest.fixture
def login_node() -> Iterator[SshServer]:
    sshd_infra.require_sshd()
    with SshServer() as server:
        yield server


async def glidein_client(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "glidein_client.site.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def site_file(tmp_path: Path, live: LiveServer, ssh: dict[str, object], token: Path) -> Path:
    raw = {
        "site": {
            "name": "short",
            "server_url": live.url,
            "token_file": str(token),
            "scheduler": "slurm",
            "scratch_dir": str(tmp_path / "scratch"),
        },
        "pilot": {"cpus": 1, "memory": "256M", "walltime": "10m"},
        "batch": {"python": "/usr/bin/python3"},
        "ssh": ssh,
    }
    path = tmp_path / "site.toml"
    path.write_text(_toml(raw))
    return path


async def test_a_too_short_totp_secret_is_named_with_the_fix(
    live_server: LiveServer, login_node: SshServer, tmp_path: Path
) -> None:
    short = tmp_path / "short.totp"
    short.write_text("JBSWY3DPEHPK3PXP\n")  # 80 bits: what some old enrolment tools made
    short.chmod(0o600)
    token = live_server.write_secret("site.token", await live_server.token(Role.SITE, "short"))
    config = site_file(tmp_path, live_server, login_node.ssh_section(totp_secret_file=str(short)), token)
    code, out = await glidein_client("status", str(config))
    assert code != 0
    assert f"The TOTP secret in {short} (named in {config} as ssh.totp_secret_file) is 80 bits long" in out, out
    assert "Enrol the login again with a longer secret" in out
    assert "Traceback" not in out and "ValueError" not in out and "unexpected" not in out.lower()
    assert login_node.failed_codes() == 0 and login_node.logins() == 0  # nothing was sent to the login node


async def test_an_unusable_site_token_is_named_with_the_fix(
    live_server: LiveServer, login_node: SshServer, tmp_path: Path
) -> None:
    token = tmp_path / "site.token"
    token.write_bytes(b"\xff\xfe\x00")
    token.chmod(0o600)
    config = site_file(tmp_path, live_server, login_node.ssh_section(), token)
    code, out = await glidein_client("status", str(config))
    assert code != 0
    assert f"The site token file {token} (named in {config} as site.token_file) is not text" in out, out
    assert "glidein-server site add" in out and "Traceback" not in out
