"""packaging/: the service units and the cron line run commands the CLIs accept, and systemd
accepts the units (with the real ``systemd-analyze verify`` where it is installed)."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from glidein_client.site import cli as client_cli
from glidein_server import cli as server_cli

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
PARSERS = {"glidein-server": server_cli._parser, "glidein-client": client_cli._parser}


def exec_start(unit: Path) -> list[str]:
    [line] = [ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart=").replace("%i", "hpc1"))


def parsed(argv: list[str]) -> argparse.Namespace:
    program = Path(argv[0]).name
    assert argv[0] == f"/opt/glidein/venv/bin/{program}", argv
    return PARSERS[program]().parse_args(argv[1:])


def test_the_server_unit_serves_its_state_dir_which_is_all_it_may_write() -> None:
    unit = PACKAGING / "glidein-server.service"
    args = parsed(exec_start(unit))
    assert args.dir == "/srv/glidein" and args.cmd == "serve"
    text = unit.read_text()
    assert "ProtectSystem=strict" in text and f"ReadWritePaths={args.dir}" in text


def test_the_client_unit_runs_the_daemon_on_its_instances_config() -> None:
    args = parsed(exec_start(PACKAGING / "glidein-client@.service"))
    assert args.cmd == "run" and args.config == "/etc/glidein/hpc1.toml"


def test_the_cron_line_runs_one_cycle() -> None:
    [line] = [
        ln
        for ln in (PACKAGING / "glidein-client.cron").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    fields = line.split(maxsplit=6)
    assert fields[:5] == ["*/5", "*", "*", "*", "*"] and fields[5] == "glidein"  # /etc/cron.d has a user field
    command = shlex.split(fields[6])
    args = parsed(command[:3])
    assert args.cmd == "once" and args.config == "/etc/glidein/hpc1.toml"
    assert command[3:] == [">>/var/log/glidein/hpc1.log", "2>&1"]


@pytest.mark.parametrize("name", ["glidein-server.service", "glidein-client@.service"])
def test_systemd_analyze_accepts_the_unit(tmp_path: Path, name: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    for program in PARSERS:
        shutil.copy("/bin/true", venv / program)  # verify checks that ExecStart names a program
    text = (PACKAGING / name).read_text().replace("/opt/glidein/venv/bin", str(venv))
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(("User=", "Group=")))  # no such user here
    unit = tmp_path / name.replace("@", "@hpc1")
    unit.write_text(text)
    checked = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
