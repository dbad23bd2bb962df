"""pilot.signal_grace: each backend's way of warning the pilot before its walltime, the pilot's flag,
and the config's checks. The Slurm warning is run for real in tests/integration/test_slurm_signal_grace.py."""

from __future__ import annotations

import shlex
from typing import Any

import pytest

from glidein_client.site.client import pilot_command
from glidein_client.site.config import SiteConfig, parse_site_config
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.schedulers.base import PilotLaunch
from glidein_client.site.schedulers.htcondor import HTCondorScheduler
from glidein_client.site.schedulers.local import LocalScheduler
from glidein_client.site.schedulers.lsf import LsfScheduler
from glidein_client.site.schedulers.pbs import PbsScheduler
from glidein_client.site.schedulers.slurm import SlurmScheduler
from glidein_client.wire.errors import ConfigError


def site(scheduler: str, **pilot: Any) -> SiteConfig:
    raw = {
        "site": {
            "name": "hpc1",
            "url": "https://glidein.example.org",
            "token_file": "/etc/glidein/hpc1.token",
            "scratch_dir": "/scratch/glidein",
            "scheduler": scheduler,
        },
        "pilot": {"cpus": 2, "memory": "2G", "walltime": "1h", **pilot},
    }
    return parse_site_config(raw, "/etc/glidein/hpc1.toml")


def launch(config: SiteConfig) -> PilotLaunch:
    workdir = "/scratch/glidein/pilots-meta/glidein-hpc1-7"
    return PilotLaunch(7, config, workdir, f"{workdir}/token", pilot_command(config, workdir))


def test_the_client_passes_the_grace_to_the_pilot_in_human_units() -> None:
    argv = pilot_command(site("slurm", signal_grace="5m"), "/w")
    assert argv[argv.index("--signal-grace") + 1] == "300s"
    assert argv[argv.index("--url") + 1] == "https://glidein.example.org"
    assert "--signal-grace" not in pilot_command(site("slurm"), "/w")  # no warning asked: none assumed


def test_slurm_asks_for_sigterm_to_the_batch_shell_before_the_time_limit() -> None:
    script = SlurmScheduler(site("slurm", signal_grace="5m"), LocalRunner()).render(launch(site("slurm")))
    assert "--signal" not in script.split("#\n")[0]
    config = site("slurm", signal_grace="5m")
    script = SlurmScheduler(config, LocalRunner()).render(launch(config))
    assert "#SBATCH --signal=B:TERM@300\n" in script
    assert "\nexec " in script  # the batch shell becomes the pilot, so the pilot gets the signal


def test_lsf_asks_for_the_warning_action_in_whole_minutes_rounded_up() -> None:
    config = site("lsf", signal_grace="90s")
    script = LsfScheduler(config, LocalRunner()).render(launch(config))
    assert "#BSUB -wa TERM\n" in script and "#BSUB -wt 0:02\n" in script


def test_pbs_script_warns_the_pilot_itself() -> None:
    config = site("pbs", signal_grace="5m")
    script = PbsScheduler(config, LocalRunner(), flavour="pro").render(launch(config))
    [line] = [ln for ln in script.splitlines() if ln.startswith("exec ")]
    argv = shlex.split(line)[1:]
    assert argv[:4] == ["timeout", "--signal=TERM", "--kill-after=360", "3300"]  # TERM 5 m before the hour
    assert argv[4:] == list(launch(config).pilot_argv)
    plain = site("pbs")
    assert "exec timeout" not in PbsScheduler(plain, LocalRunner(), flavour="pro").render(launch(plain))


def test_htcondor_warns_before_the_walltime_and_removes_gracefully() -> None:
    config = site("htcondor", signal_grace="5m")
    sched = HTCondorScheduler(config, LocalRunner())
    sub = sched.render(launch(config))
    for line in (
        "kill_sig                 = SIGTERM",
        "job_max_vacate_time      = 300",
        "want_graceful_removal    = true",
    ):
        assert f"\n{line}\n" in sub
    wrapper = sched.render_wrapper(launch(config))
    assert "exec timeout --signal=TERM --kill-after=360 3300 " in wrapper
    plain = site("htcondor")
    assert "kill_sig" not in HTCondorScheduler(plain, LocalRunner()).render(launch(plain))


def test_local_pilots_get_their_warning_from_the_script() -> None:
    config = site("local", signal_grace="5m")
    script = LocalScheduler(config, kill_after_s=30).render(launch(config))
    assert "timeout --foreground --signal=TERM --kill-after=330 3300 " in script


@pytest.mark.parametrize(
    "pilot, words",
    [
        ({"signal_grace": "31m"}, ["pilot.signal_grace (1860 s)", "half of pilot.walltime (3600 s)"]),
        ({"signal_grace": "-5"}, ["pilot.signal_grace"]),
        ({"signal_grace": "soon"}, ["pilot.signal_grace", "soon"]),
        ({"walltime": "3d", "signal_grace": "1d"}, ["at most 65535 s"]),
    ],
)
def test_a_grace_that_cannot_work_is_refused_with_the_key(pilot: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        site("slurm", **pilot)
    for word in words:
        assert word in str(err.value)


def test_url_has_one_name_and_reads_the_old_one() -> None:
    raw = {
        "site": {"name": "a", "server_url": "https://h", "token_file": "/t", "scratch_dir": "/s"},
    }
    assert parse_site_config(raw).site.server_url == "https://h"
    raw["site"]["url"] = "https://other"
    with pytest.raises(ConfigError, match="both url and server_url"):
        parse_site_config(raw)
