"""The PBS backend without PBS: script rendering (golden files), qstat parsing, state mapping, errors.

The outputs parsed here are in ``tests/fakes/samples`` (see its README): PBS Pro 2022.1
``qstat -f -F json -x``, Torque 6.1.3 ``qstat -f``, and live captures of Slurm 22.05.8's
Torque wrapper (Debian 12 ``slurm-wlm-torque``).
Set GLIDEIN_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from glidein_client.site.config import SiteConfig, parse_site_config
from glidein_client.site.runners.local import CommandResult
from glidein_client.site.schedulers.base import PilotLaunch, PilotState
from glidein_client.site.schedulers.pbs import PbsScheduler, format_walltime, parse_job_id, pbs_word
from glidein_client.site.schedulers.pbs_qstat import (
    PBS_PRO_STATES,
    TORQUE_STATES,
    Flavour,
    QstatRecord,
    detect_flavour,
    finished_state,
    parse_ctime,
    parse_qstat_full,
    parse_qstat_json,
    parse_walltime,
)
from glidein_client.wire.errors import ConfigError, SchedulerError
from tests.fakes import sample
from tests.golden_files import check_golden

CONFIG = "/etc/glidein/hpc1.toml"


def site_config(pilot: dict[str, Any] | None = None, batch: dict[str, Any] | None = None) -> SiteConfig:
    raw: dict[str, Any] = {
        "site": {
            "name": "hpc1",
            "server_url": "https://glidein.example.org",
            "token_file": "/etc/glidein/site.token",
            "scratch_dir": "/scratch/glidein",
            "scheduler": "pbs",
        },
        "pilot": pilot or {},
        "batch": batch or {},
    }
    return parse_site_config(raw, CONFIG)


FULL_PILOT = {"cpus": 8, "memory": "16G", "gpus": 2, "disk": "50G", "walltime": "36h", "whole_node": True}
FULL_BATCH = {
    "partition": "gpu",
    "account": "phy123",
    "qos": "high",
    "constraint": "skylake",
    "extra_directives": ["-m n", "#PBS -W umask=022"],
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
    """render() and the parsers need no commands; any call is a bug."""

    async def run(self, argv: list[str], **_: Any) -> CommandResult:
        raise AssertionError(f"unexpected command {argv}")

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        raise AssertionError("unexpected write")

    async def read_file(self, path: str) -> bytes:
        raise AssertionError("unexpected read")

    async def makedirs(self, path: str, *, mode: int = 0o700) -> None:
        raise AssertionError("unexpected makedirs")


def scheduler(site: SiteConfig | None = None, flavour: Flavour | None = "pro") -> PbsScheduler:
    return PbsScheduler(site or site_config(), NoRunner(), flavour=flavour)


# --- rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("golden", "flavour", "pilot", "batch"),
    [
        ("pbs_pro.sh", "pro", {}, {}),
        ("pbs_pro_full.sh", "pro", FULL_PILOT, {**FULL_BATCH, "qos": None, "constraint": "model=skylake"}),
        ("pbs_torque.sh", "torque", {}, {}),
        ("pbs_torque_full.sh", "torque", FULL_PILOT, FULL_BATCH),
    ],
)
def test_render_matches_golden(golden: str, flavour: Flavour, pilot: dict[str, Any], batch: dict[str, Any]) -> None:
    site = site_config(pilot, {k: v for k, v in batch.items() if v is not None})
    check_golden(golden, scheduler(site, flavour).render(launch(site)))


def test_render_requests_the_pilot_shape() -> None:
    site = site_config({"cpus": 4, "memory": "4G", "walltime": "90m"})
    pro = scheduler(site, "pro").render(launch(site))
    torque = scheduler(site, "torque").render(launch(site))
    assert "#PBS -l select=1:ncpus=4:mem=4096mb\n" in pro
    assert "#PBS -l nodes=1:ppn=4,mem=4096mb\n" in torque
    for script in (pro, torque):
        assert "#PBS -N glidein-hpc1-7\n" in script
        assert "#PBS -l walltime=01:30:00\n" in script
        assert "#PBS -o /scratch/glidein/pilots/7/pilot.out\n" in script
        assert script.rstrip().endswith(
            "exec glidein-pilot run --token-file /scratch/glidein/pilots/7/token --label 'a b'"
        )


def test_render_quotes_unsafe_values() -> None:
    site = site_config(batch={"account": 'my "proj"'})
    assert '#PBS -A "my \\"proj\\""\n' in scheduler(site).render(launch(site))


def test_render_needs_a_known_flavour() -> None:
    site = site_config()
    with pytest.raises(SchedulerError, match="flavour"):
        scheduler(site, flavour=None).render(launch(site))


def test_pbs_pro_refuses_a_qos() -> None:
    with pytest.raises(ConfigError, match="batch.qos") as err:
        scheduler(site_config(batch={"qos": "high"}), "pro")
    assert err.value.fields["field"] == "batch.qos"
    assert CONFIG in err.value.message
    scheduler(site_config(batch={"qos": "high"}), "torque")  # Torque (Moab) takes -l qos=


def test_extra_directive_with_line_break_is_a_config_error() -> None:
    site = site_config(batch={"extra_directives": ["-m n\n#PBS -q other"]})
    with pytest.raises(ConfigError, match="batch.extra_directives"):
        scheduler(site).render(launch(site))


def test_unknown_flavour_is_refused() -> None:
    with pytest.raises(ValueError, match="flavour"):
        PbsScheduler(site_config(), NoRunner(), flavour="lsf")  # type: ignore[arg-type]


# --- small parsers -------------------------------------------------------------------------------


def test_walltime_formats() -> None:
    assert format_walltime(3600) == "01:00:00"
    assert format_walltime(36 * 3600 + 61) == "36:01:01"
    assert parse_walltime("01:00:07") == 3607
    assert parse_walltime("125:00:00") == 125 * 3600
    assert parse_walltime("45") == 45
    assert parse_walltime(90) == 90
    assert parse_walltime("soon") is None
    assert parse_walltime(None) is None


def test_ctime_is_local_time() -> None:
    expected = time.mktime((2026, 11, 22, 5, 0, 0, 0, 0, -1))
    assert parse_ctime("Sun Nov 22 05:00:00 2026") == expected
    assert parse_ctime("Sun Nov  1 05:00:00 2026") == time.mktime((2026, 11, 1, 5, 0, 0, 0, 0, -1))
    assert parse_ctime(1795323600) == 1795323600.0
    assert parse_ctime("") is None
    assert parse_ctime("yesterday") is None


def test_pbs_word() -> None:
    assert pbs_word("workq") == "workq"
    assert pbs_word("/scratch/a-b_c/pilot.out") == "/scratch/a-b_c/pilot.out"
    assert pbs_word("a b") == '"a b"'
    with pytest.raises(ValueError):
        pbs_word("a\nb")


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ("1234.pbs01\n", "1234.pbs01"),
        ("2001.torque01.example.org\n", "2001.torque01.example.org"),
        ("17\n", "17"),  # Slurm's wrapper
        ("", None),
        ("qsub: waiting for job to start\n", None),
    ],
)
def test_parse_job_id(stdout: str, expected: str | None) -> None:
    assert parse_job_id(stdout) == expected


@pytest.mark.parametrize(
    ("stdout", "stderr", "flavour"),
    [
        (sample("pbspro-2022.1-qstat-version.txt"), "", "pro"),
        (sample("torque-6.1.3-qstat-version.txt"), "", "torque"),
        ("", sample("slurm-22.05-torque-wrapper-qstat-version.stderr.txt"), "torque"),
    ],
)
def test_detect_flavour(stdout: str, stderr: str, flavour: str) -> None:
    rc = 2 if stderr else 0
    assert detect_flavour(CommandResult(("qstat", "--version"), rc, stdout, stderr)) == flavour


# --- qstat outputs -------------------------------------------------------------------------------


def states_by_pilot(site: SiteConfig, records: list[QstatRecord], flavour: Flavour) -> dict[int, PilotState]:
    sched = scheduler(site, flavour)
    jobs = [j for j in (sched.to_pilot_job(r, flavour) for r in records) if j is not None]
    return {j.pilot_id: j.state for j in jobs}


def test_pbs_pro_json_sample() -> None:
    records = parse_qstat_json(sample("pbspro-2022.1-qstat-f-F-json-x.json"))
    assert len(records) == 11
    by_id = {r.batch_id: r for r in records}
    walltime = by_id["1004.pbs01"]
    assert (walltime.exit_status, walltime.substate, walltime.used_walltime_s, walltime.walltime_limit_s) == (
        -29,
        92,
        3607,
        3600,
    )
    assert by_id["1005.pbs01"].exit_status is None
    assert by_id["1001.pbs01"].qtime == time.mktime((2026, 11, 22, 5, 0, 0, 0, 0, -1))
    assert states_by_pilot(site_config(), records, "pro") == {
        1: PilotState.QUEUED,
        2: PilotState.RUNNING,
        3: PilotState.DONE,
        4: PilotState.TIMEOUT,  # Exit_status -29, JOB_EXEC_KILL_WALLTIME
        5: PilotState.CANCELLED,  # deleted while queued: substate 91, no exit status
        6: PilotState.CANCELLED,  # deleted while running: substate 91, 271
        7: PilotState.HELD,
        9: PilotState.FAILED,
        11: PilotState.RUNNING,  # E: exiting
    }  # 1008 is another user's job, 1010 another site's pilot


def test_pbs_pro_job_fields() -> None:
    sched = scheduler()
    records = {r.batch_id: r for r in parse_qstat_json(sample("pbspro-2022.1-qstat-f-F-json-x.json"))}
    queued = sched.to_pilot_job(records["1001.pbs01"], "pro")
    assert queued is not None
    assert (queued.batch_id, queued.pilot_id, queued.native_state) == ("1001.pbs01", 1, "Q")
    assert queued.reason.startswith("Not Running: Insufficient amount of resource")
    assert queued.submitted_at == time.mktime((2026, 11, 22, 5, 0, 0, 0, 0, -1))
    timeout = sched.to_pilot_job(records["1004.pbs01"], "pro")
    assert timeout is not None and "walltime" in timeout.reason


def test_pbs_pro_json_without_jobs() -> None:
    assert parse_qstat_json(sample("pbspro-2022.1-qstat-f-F-json-x-empty.json")) == []
    assert parse_qstat_json("") == []


def test_pbs_pro_json_with_invalid_escapes_is_repaired() -> None:
    text = '{"Jobs":{"1.s":{"Job_Name":"glidein-hpc1-1","job_state":"R","Submit_arguments":"-v A=\\,b"}}}'
    assert [r.name for r in parse_qstat_json(text)] == ["glidein-hpc1-1"]


def test_pbs_pro_json_garbage_is_a_scheduler_error() -> None:
    with pytest.raises(SchedulerError, match="JSON"):
        parse_qstat_json('{"Jobs": {')


def test_torque_sample() -> None:
    records = parse_qstat_full(sample("torque-6.1.3-qstat-f.txt"))
    assert len(records) == 10
    first = records[0]
    assert (first.batch_id, first.name, first.state, first.walltime_limit_s) == (
        "2001.torque01.example.org",
        "glidein-hpc1-21",
        "Q",
        3600,
    )
    assert states_by_pilot(site_config(), records, "torque") == {
        21: PilotState.QUEUED,
        22: PilotState.RUNNING,
        23: PilotState.DONE,
        24: PilotState.TIMEOUT,  # exit_status -11, JOB_EXEC_OVERLIMIT_WT
        25: PilotState.CANCELLED,  # 271: SIGTERM from qdel
        26: PilotState.FAILED,
        27: PilotState.HELD,
        29: PilotState.TIMEOUT,  # 265 (signal) after its full walltime
        30: PilotState.RUNNING,  # E: exiting
    }


def test_text_format_continuation_lines_do_not_make_attributes() -> None:
    text = (
        "Job Id: 5.srv\n    Job_Name = glidein-hpc1-5\n    Variable_List = A=1,\n"
        "\tB = not an attribute,C=3\n    job_state = C\n    exit_status = 0\n"
    )
    (record,) = parse_qstat_full(text)
    assert (record.name, record.state, record.exit_status) == ("glidein-hpc1-5", "C", 0)


def test_slurm_wrapper_sample() -> None:
    records = parse_qstat_full(sample("slurm-22.05-torque-wrapper-qstat-f.txt"))
    assert [r.batch_id for r in records] == ["1", "2", "3", "4", "5"]
    assert states_by_pilot(site_config(), records, "torque") == {
        41: PilotState.DONE,  # C, and the wrapper prints no exit status
        42: PilotState.RUNNING,
        43: PilotState.QUEUED,  # held in Slurm: the wrapper says Q
        45: PilotState.QUEUED,
    }


@pytest.mark.parametrize(
    ("flavour", "exit_status", "substate", "used", "expected"),
    [
        ("pro", 0, 92, 100, PilotState.DONE),
        ("pro", -29, 92, 3605, PilotState.TIMEOUT),
        ("pro", 271, 92, 3620, PilotState.TIMEOUT),  # signal after the full walltime (older servers)
        ("pro", 271, 91, 100, PilotState.CANCELLED),
        ("pro", None, 91, None, PilotState.CANCELLED),
        ("pro", 271, 92, 100, PilotState.FAILED),  # a signal, but not qdel and not the walltime
        ("pro", -11, 92, 100, PilotState.FAILED),  # -11 is JOB_EXEC_RERUN on PBS Pro, not the walltime
        ("pro", -1, 93, None, PilotState.FAILED),
        ("torque", -11, None, 3601, PilotState.TIMEOUT),
        ("torque", -29, None, 100, PilotState.FAILED),
        ("torque", 271, None, 100, PilotState.CANCELLED),
        ("torque", 0, None, 10, PilotState.DONE),
        ("torque", 2, None, 10, PilotState.FAILED),
        ("torque", None, None, 10, PilotState.DONE),  # ran; Slurm's wrapper reports no exit status
        ("torque", None, None, None, PilotState.CANCELLED),  # qdel before it ran: C without exit status
    ],
)
def test_finished_state(
    flavour: Flavour, exit_status: int | None, substate: int | None, used: int | None, expected: PilotState
) -> None:
    record = QstatRecord(
        "1.s",
        "glidein-hpc1-1",
        "F" if flavour == "pro" else "C",
        exit_status=exit_status,
        substate=substate,
        used_walltime_s=used,
        walltime_limit_s=3600,
        started=used is not None,
    )
    assert finished_state(record, flavour)[0] is expected


def test_every_documented_letter_is_mapped() -> None:
    assert set(PBS_PRO_STATES) == set("QTWREBHSUMFX")
    assert set(TORQUE_STATES) == set("QTWREHSCU")


def test_unknown_letter_is_unknown_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    sched = scheduler()
    record = QstatRecord("1.s", "glidein-hpc1-1", "Z")
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            job = sched.to_pilot_job(record, "pro")
            assert job is not None and job.state is PilotState.UNKNOWN
    assert len([r for r in caplog.records if "'Z'" in r.getMessage()]) == 1


# --- refusals ------------------------------------------------------------------------------------


def refusal(site: SiteConfig, stderr: str = "", stdout: str = "", rc: int = 1) -> SchedulerError:
    result = CommandResult(("qsub", "-j", "oe", "-o", "/x/pilot.out", "/x/pilot.pbs"), rc, stdout, stderr)
    return scheduler(site).submit_error(result)


@pytest.mark.parametrize(
    ("stderr", "stdout", "key"),
    [
        ("qsub: Unknown queue\n", "", "batch.partition"),
        ("qsub: submit error (Unknown queue MSG=requested queue not found)\n", "", "batch.partition"),
        ("", sample("slurm-22.05-torque-wrapper-qsub-invalid-partition.stdout.txt"), "batch.partition"),
        (
            "qsub: submit error (Job exceeds queue resource limits MSG=cannot satisfy queue max walltime "
            "requirement)\n",
            "",
            "pilot.walltime",
        ),
        ("qsub: Job violates queue and/or server resource limits\n", "", "pilot.cpus"),
        ("qsub: Unknown resource: skylake\n", "", "batch.constraint"),
        ("qsub: submit error (Invalid Account MSG=invalid account)\n", "", "batch.account"),
        ("qsub: illegal -m value\n", "", "batch.extra_directives"),
    ],
)
def test_refusal_names_the_config_key(stderr: str, stdout: str, key: str) -> None:
    site = site_config(batch={"partition": "gpu", "account": "phy123"})
    err = refusal(site, stderr, stdout)
    assert err.message.startswith("qsub refused the pilot: ")
    assert f"check `{key}`" in err.message and CONFIG in err.message
    assert err.fields["field"] == key
    assert err.fields["command"][0] == "qsub"
    assert err.fields["exit_code"] == 1
    assert err.fields["stderr"] == stderr


def test_refusal_message_quotes_the_queue() -> None:
    err = refusal(site_config(batch={"partition": "gpu"}), "qsub: Unknown queue\n")
    assert str(err) == (
        f"qsub refused the pilot: the queue 'gpu' does not exist or takes no jobs — check `batch.partition` "
        f"in {CONFIG}. (qsub said: Unknown queue)"
    )


def test_slurm_wrapper_refusal_keeps_sbatch_words() -> None:
    stdout = sample("slurm-22.05-torque-wrapper-qsub-invalid-partition.stdout.txt")
    err = refusal(site_config(batch={"partition": "nosuch"}), stdout=stdout)
    assert err.hint == "(qsub said: Batch job submission failed: Invalid partition name specified)"


def test_unreachable_server_is_not_blamed_on_the_config() -> None:
    err = refusal(site_config(), "Connection refused\nqsub: cannot connect to server pbs01 (errno=15010)\n", rc=111)
    assert err.message.startswith("qsub could not reach the PBS server")
    assert "field" not in err.fields


def test_unknown_refusal_points_at_the_sections() -> None:
    err = refusal(site_config(), "qsub: Something new happened\n")
    assert err.message == "qsub refused the pilot: Something new happened."
    assert err.hint == f"Check the [pilot] and [batch] sections of {CONFIG}."
