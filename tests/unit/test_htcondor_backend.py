"""The HTCondor backend without HTCondor: submit description and wrapper (golden files), job ads, errors.

The outputs parsed here are HTCondor 23 ``condor_submit``, ``condor_q -json``,
``condor_history -json`` and ``condor_rm`` texts, in ``tests/fakes/samples`` (see its README).
Set GLIDEIN_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from glidein_client.site.config import SiteConfig, parse_site_config
from glidein_client.site.runners.local import CommandResult
from glidein_client.site.schedulers.base import PilotLaunch, PilotState
from glidein_client.site.schedulers.htcondor import HoldInfo, HTCondorScheduler
from glidein_client.site.schedulers.htcondor_ads import (
    ATTRIBUTES,
    JOB_STATUS,
    NATIVE_STATES,
    ad_state,
    classad_string,
    parse_ads,
    parse_job_id,
)
from glidein_client.wire.errors import ConfigError, SchedulerError
from tests.fakes import sample
from tests.fakes.fakebatch import ALL_ATTRS
from tests.golden_files import check_golden

CONFIG = "/etc/glidein/hpc1.toml"


def site_config(pilot: dict[str, Any] | None = None, batch: dict[str, Any] | None = None) -> SiteConfig:
    raw: dict[str, Any] = {
        "site": {
            "name": "hpc1",
            "server_url": "https://glidein.example.org",
            "token_file": "/etc/glidein/site.token",
            "scratch_dir": "/scratch/glidein",
            "scheduler": "htcondor",
        },
        "pilot": pilot or {},
        "batch": batch or {},
    }
    return parse_site_config(raw, CONFIG)


#: Every key that applies to HTCondor (batch.partition, batch.qos and pilot.whole_node are refused).
FULL_PILOT = {"cpus": 8, "memory": "16G", "gpus": 1, "disk": "50G", "walltime": "36h", "idle_timeout": "5m"}
FULL_BATCH = {
    "account": "group_physics.alice",
    "constraint": '(OpSys == "LINUX") && (Arch == "X86_64")',
    "extra_directives": ['+ProjectName = "physics"', "priority = 5"],
    "env_setup": ["module load python/3.11", "export OMP_NUM_THREADS=1"],
    "python": "/usr/bin/python3",
}


def launch(site: SiteConfig, pilot_id: int = 7) -> PilotLaunch:
    workdir = f"/scratch/glidein/pilots/{pilot_id}"
    return PilotLaunch(
        pilot_id=pilot_id,
        site=site,
        workdir=workdir,
        token_file=f"{workdir}/token",
        pilot_argv=("glidein-pilot", "run", "--token-file", f"{workdir}/token", "--label", "a b"),
    )


class NoRunner:
    async def run(self, argv: list[str], **_: Any) -> CommandResult:
        raise AssertionError(f"unexpected command {argv}")

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        raise AssertionError("unexpected write")

    async def read_file(self, path: str) -> bytes:
        raise AssertionError("unexpected read")

    async def makedirs(self, path: str, *, mode: int = 0o700) -> None:
        raise AssertionError("unexpected makedirs")


def scheduler(site: SiteConfig | None = None) -> HTCondorScheduler:
    return HTCondorScheduler(site or site_config(), NoRunner())


# --- rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("stem", "pilot", "batch"), [("htcondor", {}, {}), ("htcondor_full", FULL_PILOT, FULL_BATCH)])
def test_render_matches_golden(stem: str, pilot: dict[str, Any], batch: dict[str, Any]) -> None:
    site = site_config(pilot, batch)
    sched = scheduler(site)
    check_golden(f"{stem}.sub", sched.render(launch(site)))
    check_golden(f"{stem}_pilot.sh", sched.render_wrapper(launch(site)))


def test_render_requests_the_pilot_shape() -> None:
    site = site_config({"cpus": 4, "memory": "4G", "disk": "2G", "gpus": 2, "walltime": "90m"})
    text = scheduler(site).render(launch(site))
    lines = {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in text.splitlines() if "=" in ln)}
    assert lines["request_cpus"] == "4"
    assert lines["request_memory"] == "4096"
    assert lines["request_disk"] == str(2048 * 1024)
    assert lines["request_gpus"] == "2"
    assert lines["allowed_execute_duration"] == "5400"
    assert lines["+GlideinTag"] == '"glidein-hpc1-7"'
    assert lines["batch_name"] == "glidein-hpc1-7"
    assert lines["executable"] == "/scratch/glidein/pilots/7/pilot.sh"
    assert text.rstrip().endswith("queue 1")


def test_extra_directives_come_after_glideins_own() -> None:
    site = site_config(batch={"extra_directives": ["periodic_remove = false"]})
    text = scheduler(site).render(launch(site))
    ours = text.index("periodic_remove          = GlideinWalltimeHeld")
    assert ours < text.index("periodic_remove = false") < text.index("queue 1")


@pytest.mark.parametrize(
    ("pilot", "batch", "key"),
    [
        ({}, {"partition": "gpu"}, "batch.partition"),
        ({}, {"qos": "high"}, "batch.qos"),
        ({"whole_node": True}, {}, "pilot.whole_node"),
    ],
)
def test_keys_without_meaning_in_htcondor_are_refused(pilot: dict[str, Any], batch: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        scheduler(site_config(pilot, batch))
    assert err.value.fields["field"] == key
    assert f"`{key}`" in err.value.message and CONFIG in err.value.message


def test_line_break_in_a_directive_is_a_config_error() -> None:
    site = site_config(batch={"extra_directives": ["priority = 5\nqueue 10"]})
    with pytest.raises(ConfigError, match="batch.extra_directives"):
        scheduler(site).render(launch(site))


def test_classad_string() -> None:
    assert classad_string("glidein-hpc1-7") == '"glidein-hpc1-7"'
    assert classad_string('a "b" \\') == '"a \\"b\\" \\\\"'
    with pytest.raises(ValueError):
        classad_string("a\nb")


# --- outputs -------------------------------------------------------------------------------------


def test_parse_job_id() -> None:
    assert parse_job_id(sample("htcondor-23-condor_submit.stdout.txt")) == "501.0"
    assert parse_job_id("Submitting job(s).\n") is None


def test_attributes_asked_for() -> None:
    assert ATTRIBUTES.split(",") == list(ALL_ATTRS)


def test_condor_q_sample() -> None:
    ads = parse_ads(sample("htcondor-23-condor_q-json.json"))
    assert len(ads) == 10
    jobs = {j.batch_id: j for j, _ in scheduler()._jobs(ads)}
    assert {b: j.state for b, j in jobs.items()} == {
        "501.0": PilotState.QUEUED,
        "502.0": PilotState.RUNNING,
        "503.0": PilotState.HELD,  # condor_hold by the user
        "504.0": PilotState.TIMEOUT,  # HoldReasonCode 47: allowed_execute_duration
        "505.0": PilotState.HELD,  # output transfer failed (12)
        "506.0": PilotState.RUNNING,  # transferring output
        "507.0": PilotState.SUSPENDED,  # suspended after it started: not waiting
        "509.0": PilotState.CANCELLED,  # removed, leaving the queue
        "510.0": PilotState.QUEUED,  # held while input is spooled (16)
    }  # 508.0 is another site's pilot
    held = jobs["505.0"]
    assert (held.pilot_id, held.native_state) == (25, "Held")
    assert held.reason.startswith("held (HoldReasonCode 12, HoldReasonSubCode 2): Error from slot1_3@node017")
    assert held.submitted_at == 1795323625.0


def test_condor_history_sample() -> None:
    jobs = {j.batch_id: j for j, _ in scheduler()._jobs(parse_ads(sample("htcondor-23-condor_history-json.json")))}
    assert {b: j.state for b, j in jobs.items()} == {
        "514.0": PilotState.TIMEOUT,  # removed by periodic_remove after the walltime hold
        "513.0": PilotState.CANCELLED,  # condor_rm
        "512.0": PilotState.FAILED,
        "511.0": PilotState.DONE,
    }
    assert jobs["513.0"].reason == "via condor_rm (by user alice)"
    assert jobs["512.0"].reason == "exit code 1"


def test_no_jobs_is_empty_output() -> None:
    assert parse_ads("") == []
    assert parse_ads("\n") == []


def test_garbage_json_is_a_scheduler_error() -> None:
    with pytest.raises(SchedulerError, match="JSON"):
        parse_ads("[\n{\n")
    with pytest.raises(SchedulerError, match="list"):
        parse_ads('{"ClusterId": 1}')


def test_hold_info() -> None:
    native, state, reason = ad_state(
        {
            "JobStatus": 5,
            "HoldReasonCode": 46,
            "HoldReasonSubCode": 0,
            "HoldReason": "The job exceeded allowed job duration of 60",
        }
    )
    assert (native, state) == ("Held", PilotState.TIMEOUT)
    assert "walltime" in reason
    info = HoldInfo(code=12, subcode=2, reason="transfer failed")
    assert not info.walltime
    assert str(info) == "held (HoldReasonCode 12, HoldReasonSubCode 2): transfer failed"


def test_completed_without_exit_code_failed() -> None:
    assert ad_state({"JobStatus": 4})[1:] == (PilotState.FAILED, "killed by a signal")


def test_every_job_status_is_mapped() -> None:
    assert {name.upper() for name in JOB_STATUS.values()} == set(NATIVE_STATES)


def test_unknown_job_status_is_unknown_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    sched = scheduler()
    ad = {"ClusterId": 9, "ProcId": 0, "JobStatus": 9, "GlideinTag": "glidein-hpc1-9"}
    with caplog.at_level(logging.WARNING):
        states = [sched._jobs([ad])[0][0].state for _ in range(3)]
    assert states == [PilotState.UNKNOWN] * 3
    assert len([r for r in caplog.records if "JobStatus 9" in r.getMessage()]) == 1


# --- refusals ------------------------------------------------------------------------------------


def refusal(stderr: str, stdout: str = "", rc: int = 1) -> SchedulerError:
    site = site_config(batch={"constraint": '(OpSys == "LINUX" && (Arch == "X86_64"'})
    return scheduler(site).submit_error(CommandResult(("condor_submit", "/x/pilot.sub"), rc, stdout, stderr))


def test_bad_requirements_name_batch_constraint() -> None:
    err = refusal(sample("htcondor-23-condor_submit-bad-requirements.stderr.txt"), "Submitting job(s)\n")
    assert err.message.startswith("condor_submit refused the pilot: the requirements")
    assert f"check `batch.constraint` in {CONFIG}" in err.message
    assert err.fields["field"] == "batch.constraint"
    assert err.fields["command"] == ["condor_submit", "/x/pilot.sub"]
    assert err.fields["exit_code"] == 1
    assert err.hint == "(condor_submit said: ERROR: Parse error in expression:)"


def test_bad_line_names_extra_directives() -> None:
    err = refusal("\nERROR: on Line 27 of submit file: \nsubmit: unknown command 'x'\n")
    assert err.fields["field"] == "batch.extra_directives"


def test_unreachable_schedd_is_not_blamed_on_the_config() -> None:
    err = refusal("\nERROR: Can't find address of local schedd\n")
    assert err.message.startswith("condor_submit could not reach the schedd")
    assert "field" not in err.fields


def test_pilot_under_htcondor_takes_its_end_from_the_site_walltime() -> None:
    """HTCondor tells a job no end time; the pilot ends itself at the walltime it is given."""
    from glidein_client.pilot.resources import Facts, resolve
    from glidein_client.site.client import pilot_command

    site = site_config()
    argv = pilot_command(site, "/scratch/glidein/pilots-meta/glidein-hpc1-7")
    fallback = int(argv[argv.index("--fallback-walltime") + 1].rstrip("s"))
    assert fallback == site.shape.walltime_s
    facts = Facts(
        env={"_CONDOR_JOB_AD": "/var/lib/condor/execute/dir_1/.job.ad"},
        affinity=(0, 1),
        physical_mb=4096,
        disk_free_mb=1000,
        now=1_000_000.0,
        job_ad="ClusterId = 5\nProcId = 0\n",
    )
    detected = resolve(facts, fallback_walltime_s=fallback)
    assert detected.batch_system == "htcondor"
    assert detected.end_time == 1_000_000.0 + site.shape.walltime_s
