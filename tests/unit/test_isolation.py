"""Isolation command lines (golden files), the site setting, and the choice the pilot makes.

Apptainer cannot be installed here: its command line is checked against Apptainer 1.3's
documented ``apptainer exec`` options (--contain, --ipc, --pid, --home, --bind, --pwd, --nv), and
``tests/integration/test_job_isolation.py`` runs bubblewrap for real.

Set GLIDEIN_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from glidein_client.pilot.isolation import Apptainer, Bubblewrap, NoIsolation, choose_isolation, system_mounts
from glidein_client.pilot.launch import JobRun
from glidein_client.site.client import pilot_command
from glidein_client.site.config import parse_site_config
from glidein_client.wire.errors import ConfigError
from glidein_client.wire.schema import JobSpec
from tests.golden_files import check_golden

SANDBOX = Path("/scratch/glidein/pilots/pilot-7/job-12-34")


def run(gpus: tuple[str, ...] = ()) -> JobRun:
    return JobRun(
        attempt_id=34, job_id=12, spec=JobSpec(argv=["analyse", "--in", "data.root"]), sandbox=SANDBOX,
        cores=frozenset({0}), gpus=gpus,
    )  # fmt: skip


def test_apptainer_argv_matches_golden() -> None:
    box = Apptainer(apptainer="/usr/bin/apptainer", image="/cvmfs/unpacked.cern.ch/almalinux:9")
    argv = box.argv(["analyse", "--in", "data.root"], run())
    check_golden("apptainer_argv.txt", "\n".join(argv) + "\n")
    with_gpu = box.argv(["analyse"], run(gpus=("0",)))
    assert with_gpu[with_gpu.index("--nv") + 1] == "/cvmfs/unpacked.cern.ch/almalinux:9"


def test_bwrap_argv_matches_golden() -> None:
    mounts = (
        ("--ro-bind", "/usr", "/usr"),
        ("--symlink", "usr/bin", "/bin"),
        ("--ro-bind", "/etc/passwd", "/etc/passwd"),
    )
    argv = Bubblewrap(bwrap="/usr/bin/bwrap", mounts=mounts).argv(["analyse", "--in", "data.root"], run())
    check_golden("bwrap_argv.txt", "\n".join(argv) + "\n")


def test_a_python_below_tmp_is_mounted_over_the_fresh_tmp() -> None:
    mounts = (("--ro-bind", "/usr", "/usr"), ("--ro-bind", "/tmp/ci/.venv", "/tmp/ci/.venv"))
    argv = Bubblewrap(bwrap="/usr/bin/bwrap", mounts=mounts).argv(["python3"], run())
    assert argv.index("--tmpfs") < argv.index("/tmp/ci/.venv")


def test_the_bwrap_view_holds_no_home_and_no_scratch() -> None:
    pythons = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    dests = {dest for _, _, dest in system_mounts()} - pythons  # the pilot's own Python may live anywhere
    assert "/usr" in dests
    assert not any(d == "/home" or d.startswith("/home/") for d in dests)
    assert not any(d == "/etc" or d.startswith(("/tmp", "/scratch", "/var")) for d in dests)
    assert "/etc/shadow" not in dests


def test_no_isolation_runs_the_command_as_it_is() -> None:
    assert NoIsolation().argv(["analyse"], run()) == ["analyse"]


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
async def test_auto_takes_bwrap_where_it_works(tmp_path: Path) -> None:
    chosen = await choose_isolation("auto", workdir=str(tmp_path))
    assert chosen.name == "bwrap"
    [etc] = os.listdir(tmp_path)  # its copy of /etc, in the pilot's directory ...
    assert etc.startswith("glidein-etc-")
    chosen.close()
    assert os.listdir(tmp_path) == []  # ... until the pilot ends
    assert (await choose_isolation("none")).name == "none"


@pytest.mark.skipif(shutil.which("apptainer") is not None, reason="apptainer is installed here")
async def test_apptainer_asked_for_but_missing_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="apptainer is not installed"):
        await choose_isolation("apptainer", apptainer_image="/images/el9.sif")


def site_config(**pilot: object) -> dict[str, object]:
    return {
        "site": {
            "name": "hpc1",
            "server_url": "https://glidein.example.org",
            "token_file": "/etc/glidein/hpc1.token",
            "scratch_dir": "/scratch/glidein",
        },
        "pilot": pilot,
    }


def test_the_site_setting_reaches_the_pilots_command_line() -> None:
    default = pilot_command(parse_site_config(site_config()), "/scratch/glidein/pilots-meta/glidein-hpc1-7")
    assert "--isolation" not in default  # the pilot takes the strongest that works on its node
    site = parse_site_config(site_config(isolation="apptainer", apptainer_image="/images/el9.sif"))
    argv = pilot_command(site, "/scratch/glidein/pilots-meta/glidein-hpc1-7")
    assert argv[argv.index("--isolation") + 1] == "apptainer"
    assert argv[argv.index("--apptainer-image") + 1] == "/images/el9.sif"


def test_apptainer_without_an_image_is_refused_when_the_config_is_read() -> None:
    with pytest.raises(ConfigError, match="needs pilot.apptainer_image"):
        parse_site_config(site_config(isolation="apptainer"))
    with pytest.raises(ConfigError):
        parse_site_config(site_config(isolation="chroot"))


def test_cgroup_v2_is_used_only_where_the_pilot_may_make_one(tmp_path: Path) -> None:
    from glidein_client.pilot.hardening import cgroup_v2_unusable

    v1 = "4:memory:/slurm/uid_1000/job_7\n0::/\n"
    assert cgroup_v2_unusable(v1, root=str(tmp_path)) == "this node has no cgroup v2 (unified) hierarchy"
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    own = tmp_path / "system.slice" / "slurmstepd.scope" / "job_7"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpu pids\n")
    v2 = "0::/system.slice/slurmstepd.scope/job_7\n"
    assert cgroup_v2_unusable(v2, root=str(tmp_path)) == f"the memory controller is not enabled for {own}"
    (own / "cgroup.controllers").write_text("cpu memory pids\n")
    assert cgroup_v2_unusable(v2, root=str(tmp_path)) is None  # as root here; a pilot user needs it delegated
