"""The LSF backend: the script it writes, what it reads from bjobs, and its refusal messages.

The fake commands in ``tests/fakes`` (``bsub``, ``bjobs``, ``bkill``) follow IBM Spectrum
LSF 10.1's formats; see ``tests/fakes/fakelsf.py`` and the sample in ``tests/fakes/samples``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from glidein_client.site.config import SiteConfig, parse_site_config
from glidein_client.site.runners.local import CommandResult, LocalRunner
from glidein_client.site.schedulers import make_scheduler
from glidein_client.site.schedulers.base import PilotLaunch, PilotState
from glidein_client.site.schedulers.lsf import (
    NATIVE_STATES,
    LsfScheduler,
    format_run_limit,
    parse_bjobs_json,
    parse_job_id,
    parse_submit_time,
)
from glidein_client.wire.errors import ConfigError, SchedulerError
from tests.fakes import FakeBatch, sample
from tests.golden_files import check_golden

CONFIG = "/etc/glidein/hpc1.toml"


def site_config(tmp_path: Path | None = None, batch: dict[str, Any] | None = None, **pilot: Any) -> SiteConfig:
    scratch = str(tmp_path / "scratch") if tmp_path else "/scratch/glidein"
    raw: dict[str, Any] = {
        "site": {
            "name": "hpc1",
            "server_url": "https://glidein.example.org",
            "token_file": "/etc/glidein/hpc1.token",
            "scratch_dir": scratch,
            "scheduler": "lsf",
        },
        "pilot": {"cpus": 4, "memory": "4G", "walltime": "1h", **pilot},
        "batch": batch or {},
    }
    return parse_site_config(raw, CONFIG)


def launch(site: SiteConfig, pilot_id: int = 7) -> PilotLaunch:
    workdir = os.path.join(site.site.scratch_dir, "pilots-meta", f"glidein-hpc1-{pilot_id}")
    return PilotLaunch(
        pilot_id=pilot_id,
        site=site,
        workdir=workdir,
        token_file=f"{workdir}/token",
        pilot_argv=("/opt/glidein/bin/python", "-m", "glidein_client.pilot", "run", "--site", "hpc1"),
    )


def read(path: Path) -> str:
    return path.read_text()


def file_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def scheduler(site: SiteConfig | None = None, fake: FakeBatch | None = None) -> LsfScheduler:
    return LsfScheduler(site or site_config(), LocalRunner(), env=fake.env if fake else None)


# --- the script ------------------------------------------------------------------------------------


def test_script_golden() -> None:
    site = site_config(
        batch={
            "partition": "short",
            "account": "phy123",
            "constraint": "type==X86_64 && model==Skylake",
            "extra_directives": ["#BSUB -B"],
            "env_setup": ["module load python/3.11"],
        },
        gpus=2,
    )
    check_golden("lsf_full.sh", scheduler(site).render(launch(site)))


def test_whole_node_asks_for_an_exclusive_host() -> None:
    site = site_config(whole_node=True)
    text = scheduler(site).render(launch(site))
    assert "#BSUB -x\n" in text and "rusage[mem=" not in text


def test_qos_is_refused() -> None:
    site = site_config(batch={"qos": "normal"})
    with pytest.raises(ConfigError, match="LSF has no QOS") as info:
        scheduler(site).render(launch(site))
    assert info.value.fields["field"] == "batch.qos"


def test_a_line_break_in_a_config_value_is_a_config_error() -> None:
    site = site_config(batch={"partition": "a\nb"})
    with pytest.raises(ConfigError) as info:
        scheduler(site).render(launch(site))
    assert info.value.fields["field"] == "batch.partition"


def test_run_limit_rounds_up_to_minutes() -> None:
    assert format_run_limit(3600) == "1:00"
    assert format_run_limit(61) == "0:02"
    assert format_run_limit(50 * 3600) == "50:00"


def test_make_scheduler_knows_lsf() -> None:
    assert isinstance(make_scheduler(site_config(), LocalRunner()), LsfScheduler)


# --- bjobs ---------------------------------------------------------------------------------------


def test_bjobs_sample_states() -> None:
    now = time.mktime(time.strptime("2026 Dec 02 10:00", "%Y %b %d %H:%M"))
    records = parse_bjobs_json(sample("lsf-10.1-bjobs-a-json.json"))
    assert [r["JOBID"] for r in records] == ["4001", "4002", "4003", "4004", "4005", "4006"]
    assert parse_submit_time(records[0]["SUBMIT_TIME"], now) == time.mktime(
        time.strptime("2026 Dec 01 09:15", "%Y %b %d %H:%M")
    )


def test_submit_time_without_a_year_is_in_the_past() -> None:
    now = time.mktime(time.strptime("2027 Jan 02 10:00", "%Y %b %d %H:%M"))
    assert parse_submit_time("Dec 31 23:00", now) == time.mktime(time.strptime("2026 Dec 31 23:00", "%Y %b %d %H:%M"))
    assert parse_submit_time("-", now) is None


def test_every_documented_state_is_mapped() -> None:
    assert set(NATIVE_STATES) == {
        "PEND",
        "WAIT",
        "RUN",
        "PROV",
        "PSUSP",
        "USUSP",
        "SSUSP",
        "DONE",
        "EXIT",
        "UNKWN",
        "ZOMBI",
    }


def test_job_id() -> None:
    assert parse_job_id("Job <4242> is submitted to queue <normal>.\n") == "4242"
    assert parse_job_id("Job <17> is submitted to default queue <normal>.\n") == "17"
    assert parse_job_id("garbage") is None


def test_unreadable_bjobs_json_is_a_scheduler_error() -> None:
    with pytest.raises(SchedulerError, match="bjobs printed JSON"):
        parse_bjobs_json('{"RECORDS": [')


# --- through the fake LSF commands ---------------------------------------------------------------


async def test_lsf_pilot_lifecycle(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch")
    site = site_config(tmp_path, {"partition": "short", "account": "phy123"})
    sched = scheduler(site, fake)
    assert await sched.status() == []  # bjobs: "Job <glidein-hpc1-*> is not found", exit 255
    ids = [await sched.submit(launch(site, n)) for n in (1, 2, 3, 4)]
    assert ids == ["4000", "4001", "4002", "4003"]
    assert fake.calls("bsub") == [["bsub"]] * 4  # the script travels on stdin, so #BSUB lines count
    job = fake.lsf_job("4000")
    assert job["name"] == "glidein-hpc1-1" and job["queue"] == "short"
    assert job["options"]["-n"] == ["4"] and job["options"]["-W"] == ["1:00"] and job["options"]["-P"] == ["phy123"]
    script = Path(site.site.scratch_dir, "pilots-meta", "glidein-hpc1-1", "pilot.lsf")
    assert read(script) == sched.render(launch(site, 1)) and file_mode(script) == 0o700

    fake.lsf_update("4001", stat="RUN", pend_reason="")
    fake.lsf_update(
        "4002", stat="EXIT", exit_code="140", exit_reason="TERM_RUNLIMIT: job killed after reaching LSF run time limit"
    )
    fake.lsf_update("4003", stat="SSUSP")
    jobs = {j.batch_id: j for j in await sched.status()}
    assert {b: j.state for b, j in jobs.items()} == {
        "4000": PilotState.QUEUED,
        "4001": PilotState.RUNNING,
        "4002": PilotState.TIMEOUT,
        "4003": PilotState.SUSPENDED,
    }
    assert jobs["4000"].reason == "New job is waiting for scheduling"
    assert jobs["4000"].submitted_at is not None and abs(jobs["4000"].submitted_at - time.time()) < 120

    await sched.cancel(["4000", "4002", "9999"])  # 4002 has finished, 9999 is unknown: both gone already
    states = {j.batch_id: (j.state, j.reason) for j in await sched.status()}
    assert states["4000"] == (PilotState.CANCELLED, "TERM_OWNER: job killed by owner")


async def test_lsf_refusal_names_the_key(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch")
    site = site_config(tmp_path, {"partition": "nosuch"})
    with pytest.raises(SchedulerError) as info:
        await scheduler(site, fake).submit(launch(site))
    assert str(info.value) == (
        f"bsub refused the pilot: the queue 'nosuch' does not exist or takes no jobs — check `batch.partition` "
        f"in {CONFIG}. (bsub said: nosuch: No such queue. Job not submitted.)"
    )
    assert info.value.fields["exit_code"] == 255


async def test_lsf_over_the_queue_run_limit(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch")
    site = site_config(tmp_path, walltime="4d")
    with pytest.raises(SchedulerError) as info:
        await scheduler(site, fake).submit(launch(site))
    assert info.value.fields["field"] == "pilot.walltime"
    assert "over a hard limit of the queue" in info.value.message and "96:00" in info.value.message


@pytest.mark.parametrize(
    ("stderr", "key"),
    [
        ("User cannot use the queue. Job not submitted.\n", "batch.partition"),
        ("Too many processors requested. Job not submitted.\n", "pilot.cpus"),
        ("Bad resource requirement syntax. Job not submitted.\n", "batch.constraint"),
        ("Queue does not have enough per-user job slots. Job not submitted.\n", "limits.max_pilots"),
        ("bsub: illegal option -- z\nUsage: bsub [options] command\n", "batch.extra_directives"),
    ],
)
def test_refusals_name_the_key(stderr: str, key: str) -> None:
    err = scheduler().submit_error(CommandResult(("bsub",), 255, "", stderr))
    assert err.fields["field"] == key and f"check `{key}`" in err.message


def test_lsf_down_is_not_blamed_on_the_config() -> None:
    err = scheduler().submit_error(CommandResult(("bsub",), 255, "", "LSF is down. Please wait ...\n"))
    assert err.message.startswith("bsub could not reach LSF") and "field" not in err.fields


async def test_bkill_trouble_that_is_not_gone_is_an_error(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch")
    fake.fail_next("bkill", rc=255, stderr="Job <4000>: User permission denied\n")
    with pytest.raises(SchedulerError, match="User permission denied"):
        await scheduler(site_config(tmp_path), fake).cancel(["4000"])
    with pytest.raises(SchedulerError, match="not an LSF job id"):
        await scheduler(site_config(tmp_path), fake).cancel(["4000.x"])
