"""The PBS and HTCondor backends through the real LocalRunner against fake batch commands.

The fakes (``tests/fakes``) print the formats of PBS Pro 2022.1 (``qstat -f -F json -x``),
Torque 6.1.3 (``qstat -f``), Slurm 22.05.8's Torque wrapper and HTCondor 23 (``condor_submit``,
``condor_q -json``, ``condor_history -json``, ``condor_rm``, ``condor_release``), and record
every command line, so these tests check both what the backends run and what they make of
the answers while a test moves each job through its states.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from glidein_client.site.config import LimitsSection, SiteConfig, parse_site_config
from glidein_client.site.decisions import decide
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.schedulers.base import PilotJob, PilotLaunch, PilotState
from glidein_client.site.schedulers.htcondor import ATTRIBUTES, CONSTRAINT, HTCondorScheduler
from glidein_client.site.schedulers.pbs import PbsScheduler
from glidein_client.wire.errors import ConfigError, SchedulerError
from tests.fakes import FakeBatch, fakebatch, sample

CONFIG = "site_configs/hpc1.toml"


def site_config(tmp_path: Path, scheduler: str, batch: dict[str, Any] | None = None) -> SiteConfig:
    raw: dict[str, Any] = {
        "site": {
            "name": "hpc1",
            "server_url": "https://glidein.example.org",
            "token_file": str(tmp_path / "site.token"),
            "scratch_dir": str(tmp_path / "scratch"),
            "scheduler": scheduler,
        },
        "pilot": {"cpus": 4, "memory": "4G", "walltime": "1h"},
        "batch": batch or {},
    }
    return parse_site_config(raw, CONFIG)


def launch(site: SiteConfig, pilot_id: int) -> PilotLaunch:
    workdir = os.path.join(site.site.scratch_dir, "pilots", str(pilot_id))
    return PilotLaunch(
        pilot_id=pilot_id,
        site=site,
        workdir=workdir,
        token_file=f"{workdir}/token",
        pilot_argv=("glidein-pilot", "run", "--token-file", f"{workdir}/token"),
    )


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def read(path: Path) -> str:
    return path.read_text()


def by_pilot(jobs: list[PilotJob]) -> dict[int, PilotJob]:
    return {j.pilot_id: j for j in jobs}


def states(jobs: list[PilotJob]) -> dict[int, PilotState]:
    return {j.pilot_id: j.state for j in jobs}


# --- PBS Pro -------------------------------------------------------------------------------------


async def test_pbs_pro_pilot_lifecycle(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch", "pro")
    site = site_config(tmp_path, "pbs", {"partition": "workq"})
    sched = PbsScheduler(site, LocalRunner(), env=fake.env)

    first = launch(site, 1)
    batch_id = await sched.submit(first)
    assert batch_id == "1000.pbs01"
    assert sched.flavour == "pro"
    script = Path(first.workdir, "pilot.pbs")
    assert file_mode(script) == 0o700
    assert "#PBS -l select=1:ncpus=4:mem=4096mb\n" in read(script)
    out = f"{first.workdir}/pilot.out"
    assert fake.calls() == [["qstat", "--version"], ["qsub", "-j", "oe", "-o", out, str(script)]]
    assert fake.job(batch_id)["name"] == "glidein-hpc1-1"
    assert fake.job(batch_id)["queue"] == "workq"

    ids = [batch_id] + [await sched.submit(launch(site, n)) for n in (2, 3, 4, 5)]
    fake.add_job("900.pbs01", "analysis")  # another user's job
    fake.add_job("901.pbs01", "glidein-hpc2-1")  # another site's pilot

    jobs = await sched.status()
    assert states(jobs) == dict.fromkeys((1, 2, 3, 4, 5), PilotState.QUEUED)
    assert by_pilot(jobs)[1].batch_id == batch_id
    assert by_pilot(jobs)[1].native_state == "Q"
    assert by_pilot(jobs)[1].reason.startswith("Not Running")
    assert by_pilot(jobs)[1].submitted_at == pytest.approx(fake.job(batch_id)["qtime"], abs=1.0)

    for job_id in ids[:4]:
        fake.start(job_id)
    fake.finish(ids[1], 0)
    fake.finish(ids[2], -29, used_walltime_s=3605)  # JOB_EXEC_KILL_WALLTIME
    fake.update_job(ids[4], state="H", comment="Job held by alice")
    assert states(await sched.status()) == {
        1: PilotState.RUNNING,
        2: PilotState.DONE,
        3: PilotState.TIMEOUT,
        4: PilotState.RUNNING,
        5: PilotState.HELD,
    }

    await sched.cancel([ids[3], ids[4]])  # a running and a held pilot
    ended = by_pilot(await sched.status())
    assert (ended[4].state, ended[4].native_state) == (PilotState.CANCELLED, "F")
    assert ended[5].state is PilotState.CANCELLED
    assert fake.job(ids[3])["exit_status"] == 271 and fake.job(ids[4])["exit_status"] is None

    # Gone or finished ids: qdel complains and exits non-zero; the goal is reached all the same.
    await sched.cancel([ids[1], "4242.pbs01"])
    assert fake.calls("qdel")[-1] == ["qdel", ids[1], "4242.pbs01"]
    assert fake.calls("qstat").count(["qstat", "--version"]) == 1
    assert fake.calls("qstat")[1:] == [["qstat", "-f", "-F", "json", "-x"]] * 3


async def test_pbs_pro_refusal_names_the_queue_key(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch", "pro")
    site = site_config(tmp_path, "pbs", {"partition": "nosuch"})
    sched = PbsScheduler(site, LocalRunner(), env=fake.env)
    with pytest.raises(SchedulerError) as err:
        await sched.submit(launch(site, 1))
    assert str(err.value) == (
        "qsub refused the pilot: the queue 'nosuch' does not exist or takes no jobs — check `batch.partition` "
        f"in {CONFIG}. (qsub said: Unknown queue)"
    )
    assert err.value.fields["exit_code"] == 170
    assert err.value.fields["stderr"] == "qsub: Unknown queue\n"
    assert err.value.fields["command"][0] == "qsub"
    assert fake.state()["jobs"] == {}


async def test_qstat_failure_is_a_scheduler_error(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch", "pro")
    sched = PbsScheduler(site_config(tmp_path, "pbs"), LocalRunner(), env=fake.env, flavour="pro")
    fake.fail_next("qstat", rc=1, stderr="Connection refused\nqstat: cannot connect to server pbs01 (errno=15010)\n")
    with pytest.raises(SchedulerError) as err:
        await sched.status()
    assert "qstat" in err.value.message and "cannot connect to server" in err.value.message
    assert err.value.fields["exit_code"] == 1
    assert fake.calls() == [["qstat", "-f", "-F", "json", "-x"]]  # no --version: flavour given


async def test_qdel_failure_that_is_not_gone_is_an_error(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch", "pro")
    site = site_config(tmp_path, "pbs")
    sched = PbsScheduler(site, LocalRunner(), env=fake.env)
    batch_id = await sched.submit(launch(site, 1))
    fake.fail_next("qdel", rc=159, stderr=f"qdel: Unauthorized Request  {batch_id}\n")
    with pytest.raises(SchedulerError, match="Unauthorized Request"):
        await sched.cancel([batch_id])


async def test_cancel_refuses_ids_that_are_not_pbs_ids(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch", "pro")
    sched = PbsScheduler(site_config(tmp_path, "pbs"), LocalRunner(), env=fake.env, flavour="pro")
    with pytest.raises(SchedulerError, match="not a PBS job id"):
        await sched.cancel(["1; rm -rf /"])
    await sched.cancel([])
    assert fake.calls() == []


# --- Torque and Slurm's Torque wrapper ----------------------------------------------------------------


async def test_torque_pilot_lifecycle(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch", "torque")
    site = site_config(tmp_path, "pbs", {"qos": "normal"})
    sched = PbsScheduler(site, LocalRunner(), env=fake.env)
    ids = [await sched.submit(launch(site, n)) for n in (1, 2, 3, 4, 5)]
    assert sched.flavour == "torque"
    assert ids[0] == "1000.torque01.example.org"
    script = read(Path(launch(site, 1).workdir, "pilot.pbs"))
    assert "#PBS -l nodes=1:ppn=4,mem=4096mb\n" in script and "#PBS -l qos=normal\n" in script
    assert fake.job(ids[0])["resources"] == {
        "nodes": "1:ppn=4",
        "mem": "4096mb",
        "walltime": "01:00:00",
        "qos": "normal",
    }

    for job_id in ids[:4]:
        fake.start(job_id)
    fake.finish(ids[0], 0)
    fake.finish(ids[1], -11, used_walltime_s=3601)  # JOB_EXEC_OVERLIMIT_WT
    fake.finish(ids[2], 1)
    assert states(await sched.status()) == {
        1: PilotState.DONE,
        2: PilotState.TIMEOUT,
        3: PilotState.FAILED,
        4: PilotState.RUNNING,
        5: PilotState.QUEUED,
    }

    await sched.cancel([ids[3], ids[4], ids[0]])  # running, queued, completed
    jobs = by_pilot(await sched.status())
    assert jobs[4].state is PilotState.CANCELLED  # exit_status 271
    # Torque keeps a job deleted before it ran as completed (C), without an exit status, for
    # keep_completed seconds: that is a cancel, not a pilot that finished its work.
    assert jobs[5].state is PilotState.CANCELLED and jobs[5].native_state == "C"
    assert fake.calls("qstat")[1:] == [["qstat", "-f"]] * 2


async def test_slurm_torque_wrapper_flavour(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch", "slurm")
    site = site_config(tmp_path, "pbs")
    sched = PbsScheduler(site, LocalRunner(), env=fake.env)
    assert await sched.status() == []  # qstat -f exits 153 with nothing to say when there are no jobs
    assert sched.flavour == "torque"  # qstat --version is refused (exit 2): Torque dialect
    batch_id = await sched.submit(launch(site, 1))
    assert batch_id == "1000"
    fake.start(batch_id)
    assert states(await sched.status()) == {1: PilotState.RUNNING}
    await sched.cancel([batch_id])
    (job,) = await sched.status()
    assert (job.state, job.reason) == (PilotState.DONE, "ended; the batch system reports no exit status")
    await sched.cancel([batch_id])  # the wrapper's qdel exits 1 without a word for a finished job


async def test_slurm_torque_wrapper_refusal(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch", "slurm")
    site = site_config(tmp_path, "pbs", {"partition": "gpu"})
    sched = PbsScheduler(site, LocalRunner(), env=fake.env, flavour="torque")
    with pytest.raises(SchedulerError) as err:
        await sched.submit(launch(site, 1))
    assert "check `batch.partition`" in err.value.message
    assert err.value.hint == "(qsub said: Batch job submission failed: Invalid partition name specified)"


# --- HTCondor ------------------------------------------------------------------------------------


async def test_htcondor_pilot_lifecycle(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch")
    site = site_config(tmp_path, "htcondor", {"constraint": 'OpSys == "LINUX"'})
    sched = HTCondorScheduler(site, LocalRunner(), env=fake.env)
    query = ["condor_q", "-json", "-attributes", ATTRIBUTES, "-constraint", CONSTRAINT]

    assert await sched.status() == []  # condor_q prints nothing when no job matches
    first = launch(site, 1)
    batch_id = await sched.submit(first)
    assert batch_id == "500.0"
    sub, wrapper = Path(first.workdir, "pilot.sub"), Path(first.workdir, "pilot.sh")
    assert file_mode(wrapper) == 0o700
    assert fake.calls() == [query, ["condor_submit", str(sub)]]
    commands = fake.condor_ad(batch_id)["commands"]
    assert commands["executable"] == str(wrapper)
    assert commands["requirements"] == 'OpSys == "LINUX"'
    assert commands["request_memory"] == "4096"
    ids = [batch_id] + [await sched.submit(launch(site, n)) for n in (2, 3, 4, 5)]
    fake.condor_add("900.0")  # a job without a GlideinTag: not selected by the constraint
    fake.condor_add("901.0", GlideinTag="glidein-hpc2-1", JobBatchName="glidein-hpc2-1")

    jobs = by_pilot(await sched.status())
    assert states(list(jobs.values())) == dict.fromkeys((1, 2, 3, 4, 5), PilotState.QUEUED)
    assert (jobs[1].batch_id, jobs[1].native_state) == (batch_id, "Idle")
    assert jobs[1].submitted_at == pytest.approx(fake.condor_ad(batch_id)["QDate"])

    fake.condor_update(ids[0], JobStatus=2)
    fake.condor_hold(ids[1], 47, "The job exceeded allowed execute duration of 3600")
    fake.condor_hold(ids[2], 12, "Transfer output files failure", subcode=2)
    fake.condor_update(ids[3], JobStatus=7)
    jobs = by_pilot(await sched.status())
    assert states(list(jobs.values())) == {
        1: PilotState.RUNNING,
        2: PilotState.TIMEOUT,
        3: PilotState.HELD,
        4: PilotState.SUSPENDED,  # JobStatus 7: started, then suspended; not waiting capacity
        5: PilotState.QUEUED,
    }
    assert jobs[3].reason == "held (HoldReasonCode 12, HoldReasonSubCode 2): Transfer output files failure"
    hold = sched.hold_reason(ids[2])
    assert hold is not None and (hold.code, hold.subcode, hold.walltime) == (12, 2, False)
    walltime_hold = sched.hold_reason(ids[1])
    assert walltime_hold is not None and walltime_hold.walltime
    assert sched.hold_reason(ids[0]) is None

    await sched.release([ids[2], ids[0], "777.0"])  # not held and unknown ids are skipped
    assert fake.calls("condor_release") == [["condor_release", ids[2], ids[0], "777.0"]]
    assert by_pilot(await sched.status())[3].state is PilotState.QUEUED
    assert sched.hold_reason(ids[2]) is None

    fake.condor_leave(ids[0], JobStatus=4, ExitCode=0)
    fake.condor_leave(
        ids[1],
        JobStatus=3,
        RemoveReason=(
            "The job attribute PeriodicRemove expression 'GlideinWalltimeHeld && ((time() - EnteredCurrentStatus) > "
            "1800)' evaluated to TRUE"
        ),
    )
    await sched.cancel([ids[2], ids[3], ids[4], "4242.0"])  # "Job 4242.0 not found": already gone
    assert await sched.status() == []  # completed and removed pilots leave the queue

    ended = by_pilot(await sched.history(ids))
    assert states(list(ended.values())) == {
        1: PilotState.DONE,
        2: PilotState.TIMEOUT,
        3: PilotState.CANCELLED,
        4: PilotState.CANCELLED,
        5: PilotState.CANCELLED,
    }
    assert ended[4].reason == "via condor_rm (by user alice)"
    history_call = fake.calls("condor_history")[-1]
    assert history_call[:4] == ["condor_history", "-json", "-attributes", ATTRIBUTES]
    assert history_call[-2:] == ["-limit", "5"]


async def test_htcondor_refusal_names_the_key(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch")
    site = site_config(tmp_path, "htcondor", {"constraint": '(OpSys == "LINUX"'})
    sched = HTCondorScheduler(site, LocalRunner(), env=fake.env)
    with pytest.raises(SchedulerError) as err:
        await sched.submit(launch(site, 1))
    assert "check `batch.constraint`" in err.value.message
    assert err.value.fields["command"][0] == "condor_submit"
    assert "Parse error" in err.value.fields["stderr"]


async def test_condor_rm_failure_that_is_not_gone_is_an_error(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch")
    site = site_config(tmp_path, "htcondor")
    sched = HTCondorScheduler(site, LocalRunner(), env=fake.env)
    batch_id = await sched.submit(launch(site, 1))
    fake.fail_next("condor_rm", rc=1, stderr=f"Permission denied to remove job {batch_id}\n")
    with pytest.raises(SchedulerError, match="Permission denied"):
        await sched.cancel([batch_id])
    fake.fail_next("condor_rm", rc=1, stderr="")
    with pytest.raises(SchedulerError, match="exit code 1"):
        await sched.cancel([batch_id])


async def test_condor_q_failure_is_a_scheduler_error(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch")
    sched = HTCondorScheduler(site_config(tmp_path, "htcondor"), LocalRunner(), env=fake.env)
    fake.fail_next(
        "condor_q",
        rc=1,
        stderr="\n-- Failed to fetch ads from: <10.0.0.1:9618> : login01\nSECMAN:2007:Failed to end classad message.\n",
    )
    with pytest.raises(SchedulerError, match="condor_q"):
        await sched.status()


async def test_missing_commands_are_named(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path)}
    with pytest.raises(SchedulerError, match="'condor_q' was not found"):
        await HTCondorScheduler(site_config(tmp_path, "htcondor"), LocalRunner(), env=env).status()
    with pytest.raises(SchedulerError, match="'qstat' was not found"):
        await PbsScheduler(site_config(tmp_path, "pbs"), LocalRunner(), env=env).status()


# --- the fakes print what the real tools print ----------------------------------------------------------


def _run_fake(fake: FakeBatch, *argv: str) -> str:
    env = {**os.environ, **fake.env}
    return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=30, check=True).stdout


def _torque_keys(text: str) -> list[list[str]]:
    jobs: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            jobs.append([])
        elif line.startswith("    ") and " = " in line:
            jobs[-1].append(line.split(" = ", 1)[0].strip())
    return jobs


def test_fakes_print_the_sample_formats(tmp_path: Path) -> None:
    script = tmp_path / "job.pbs"
    script.write_text("#!/bin/bash\n#PBS -N glidein-hpc1-1\n#PBS -l walltime=01:00:00\nexit 0\n")

    pro = FakeBatch(tmp_path / "pro", "pro")
    batch_id = _run_fake(pro, "qsub", "-j", "oe", "-o", "/x/pilot.out", str(script)).strip()
    pro.start(batch_id)
    pro.finish(batch_id, 0)
    fake_job = json.loads(_run_fake(pro, "qstat", "-f", "-F", "json", "-x"))["Jobs"][batch_id]
    sample_job = json.loads(sample("pbspro-2022.1-qstat-f-F-json-x.json"))["Jobs"]["1003.pbs01"]
    assert list(fake_job) == list(sample_job)

    torque = FakeBatch(tmp_path / "torque", "torque")
    batch_id = _run_fake(torque, "qsub", "-j", "oe", "-o", "/x/pilot.out", str(script)).strip()
    torque.start(batch_id)
    torque.finish(batch_id, 0)
    (fake_keys,) = _torque_keys(_run_fake(torque, "qstat", "-f"))
    sample_keys = _torque_keys(sample("torque-6.1.3-qstat-f.txt"))[2]  # 2003: completed
    assert fake_keys == [k for k in sample_keys if k in fake_keys]
    assert set(sample_keys) - set(fake_keys) <= {"Walltime.Remaining"} | {
        k for k in sample_keys if k.startswith("req_information.")
    }

    condor = FakeBatch(tmp_path / "condor")
    condor.condor_add("501.0", JobStatus=1, GlideinTag="glidein-hpc1-21", JobBatchName="glidein-hpc1-21")
    text = _run_fake(condor, "condor_q", "-json", "-attributes", ATTRIBUTES, "-constraint", CONSTRAINT)
    sample_text = sample("htcondor-23-condor_q-json.json")
    assert text.splitlines()[:2] == sample_text.splitlines()[:2] == ["[", "{"]
    assert list(json.loads(text)[0]) == list(json.loads(sample_text)[0])


# --- PBS as it really behaves ------------------------------------------------------------------------


async def test_pbs_server_without_job_history_still_counts_its_pilots(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # job_history_enable is off by default: qstat -x prints the JSON header alone, says so on
    # stderr and exits 0. Read as "no pilots", the client would submit every cycle without limit.
    fake = FakeBatch(tmp_path / "batch", "pro", history=False)
    site = site_config(tmp_path, "pbs")
    sched = PbsScheduler(site, LocalRunner(), env=fake.env)
    ids = [await sched.submit(launch(site, n)) for n in (1, 2)]
    fake.start(ids[0])
    with caplog.at_level(logging.WARNING):
        jobs = await sched.status()
    assert states(jobs) == {1: PilotState.RUNNING, 2: PilotState.QUEUED}
    assert any("job_history_enable" in r.getMessage() for r in caplog.records)
    limits = LimitsSection(max_pilots=2, max_idle_pilots=2, max_submit_per_cycle=5)
    assert decide(10, jobs, limits, now=time.time(), max_queued_s=86400).submit == 0  # max_pilots holds

    await sched.cancel([ids[1]])
    assert states(await sched.status()) == {1: PilotState.RUNNING}  # without history a deleted job is gone
    qstats = [c for c in fake.calls("qstat") if c != ["qstat", "--version"]]
    assert qstats == [["qstat", "-f", "-F", "json", "-x"], ["qstat", "-f", "-F", "json"], ["qstat", "-f", "-F", "json"]]


async def test_another_users_bare_number_job_name_does_not_blind_the_site(tmp_path: Path) -> None:
    # OpenPBS up to 23.06 prints a Job_Name such as .123 or -05 bare: invalid JSON (openpbs #1255).
    fake = FakeBatch(tmp_path / "batch", "pro")
    site = site_config(tmp_path, "pbs")
    sched = PbsScheduler(site, LocalRunner(), env=fake.env)
    batch_id = await sched.submit(launch(site, 1))
    fake.add_job("900.pbs01", ".123")
    fake.add_job("901.pbs01", "-05")
    fake.add_job("902.pbs01", "inf")
    text = _run_fake(fake, "qstat", "-f", "-F", "json", "-x")
    assert '"Job_Name":.123,' in text and '"Job_Name":-05,' in text  # as the real qstat prints it
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    jobs = await sched.status()
    assert [(j.batch_id, j.state) for j in jobs] == [(batch_id, PilotState.QUEUED)]


async def test_suspended_pilot_is_not_removed_as_queued_too_long(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch", "pro")
    site = site_config(tmp_path, "pbs")
    sched = PbsScheduler(site, LocalRunner(), env=fake.env)
    batch_id = await sched.submit(launch(site, 1))
    fake.update_job(batch_id, qtime=time.time() - 2 * 86400)
    fake.start(batch_id)
    fake.update_job(batch_id, state="S", substate=43)  # suspended (preempted) after a day of running
    (job,) = await sched.status()
    assert job.state is PilotState.SUSPENDED and job.native_state == "S"
    decision = decide(0, [job], LimitsSection(), now=time.time(), max_queued_s=86400)
    assert decision.remove == ()  # not waiting capacity: never "queued too long", never surplus


@pytest.mark.parametrize("flavour", ["pro", "torque"])
async def test_pbs_times_are_read_in_the_zone_qstat_writes_them(tmp_path: Path, flavour: str) -> None:
    # qstat prints ctime() strings in the zone of the login node it runs on (over SSH: not ours).
    fake = FakeBatch(tmp_path / "batch", flavour, tz="XST-5:30")
    site = site_config(tmp_path, "pbs")
    sched = PbsScheduler(site, LocalRunner(), env=fake.env)
    before = time.time()
    await sched.submit(launch(site, 1))
    (job,) = await sched.status()
    assert job.submitted_at is not None and before - 2 <= job.submitted_at <= time.time() + 1


async def test_torque_without_keep_completed_forgets_a_deleted_job(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch", "torque", keep_completed=0)
    site = site_config(tmp_path, "pbs")
    sched = PbsScheduler(site, LocalRunner(), env=fake.env)
    batch_id = await sched.submit(launch(site, 1))
    await sched.cancel([batch_id])
    assert await sched.status() == []


@pytest.mark.parametrize(
    ("stderr", "key", "words"),
    [
        ("qsub: would exceed per-user limit on resource ncpus in queue workq\n", "limits.max_pilots", "ncpus"),
        ("qsub: would exceed per-user limit on resource mem in complex\n", "limits.max_pilots", "mem in the complex"),
        ("qsub: Maximum number of jobs for user alice already in queue workq\n", "limits.max_pilots", "queue workq"),
        ("qsub: would exceed queue workq's per-user limit\n", "limits.max_pilots", "queue workq's"),
        ("qsub: Unknown resource: ngpus\n", "pilot.gpus", "'ngpus'"),
        ("qsub: Unknown resource: skylake\n", "batch.constraint", "'skylake'"),
    ],
)
async def test_pbs_refusals_name_the_limit_and_the_key(tmp_path: Path, stderr: str, key: str, words: str) -> None:
    fake = FakeBatch(tmp_path / "batch", "pro")
    site = parse_site_config(
        {
            "site": {
                "name": "hpc1",
                "server_url": "https://glidein.example.org",
                "token_file": str(tmp_path / "t"),
                "scratch_dir": str(tmp_path / "scratch"),
                "scheduler": "pbs",
            },
            "pilot": {"cpus": 4, "memory": "4G", "gpus": 1, "walltime": "1h"},
            "batch": {"constraint": "skylake"},
        },
        CONFIG,
    )
    sched = PbsScheduler(site, LocalRunner(), env=fake.env)
    fake.fail_next("qsub", rc=1 if "Unknown" not in stderr else 15035 % 256, stderr=stderr)
    with pytest.raises(SchedulerError) as err:
        await sched.submit(launch(site, 1))
    assert err.value.fields["field"] == key
    assert f"check `{key}`" in err.value.message and words in err.value.message
    if key == "limits.max_pilots":
        assert "site's admin" in err.value.message


async def test_qdel_of_an_exiting_job_is_not_an_error(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch", "torque")
    sched = PbsScheduler(site_config(tmp_path, "pbs"), LocalRunner(), env=fake.env, flavour="torque")
    fake.fail_next(
        "qdel", rc=170, stderr="qdel: Request invalid for state of job MSG=invalid state for job - EXITING 7.t\n"
    )
    await sched.cancel(["7.t"])


# --- HTCondor as it really behaves ------------------------------------------------------------------


def test_condor_submit_refuses_if_needed_with_on_exit_or_evict(tmp_path: Path) -> None:
    # The pair the HTCondor backend once wrote: refused by every condor_submit from 9.0 to 24.x.
    fake = FakeBatch(tmp_path / "batch")
    sub = tmp_path / "old.sub"
    sub.write_text(
        "executable = /bin/true\nshould_transfer_files = IF_NEEDED\nwhen_to_transfer_output = ON_EXIT_OR_EVICT\n"
        "queue 1\n"
    )
    env = {**os.environ, **fake.env}
    done = subprocess.run(["condor_submit", str(sub)], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert " ".join(done.stderr.split()).startswith(
        'ERROR: "when_to_transfer_output = ON_EXIT_OR_EVICT" and "should_transfer_files = IF_NEEDED" are incompatible.'
    )
    assert all(len(line) <= 78 for line in done.stderr.splitlines())  # print_wrapped_text
    assert fake.state()["condor"]["queue"] == {}


async def test_htcondor_pilot_is_accepted_by_condor_submit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeBatch(tmp_path / "batch")
    site = site_config(tmp_path, "htcondor", {"extra_directives": ['+ProjectName = "phy"', "nice_user_x = true"]})
    sched = HTCondorScheduler(site, LocalRunner(), env=fake.env)
    with caplog.at_level(logging.WARNING):
        batch_id = await sched.submit(launch(site, 1))
    commands = fake.condor_ad(batch_id)["commands"]
    assert commands["should_transfer_files"] == "NO" and "when_to_transfer_output" not in commands
    # condor_submit's warning about an unknown key reaches the log (it submits all the same).
    (warning,) = [r.getMessage() for r in caplog.records if "was unused by condor_submit" in r.getMessage()]
    assert "'nice_user_x = true'" in warning and f"check `batch.extra_directives` in {CONFIG}" in warning


async def test_htcondor_without_a_shared_filesystem_sends_the_pilots_files(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch")
    site = site_config(tmp_path, "htcondor", {"shared_filesystem": False})
    sched = HTCondorScheduler(site, LocalRunner(), env=fake.env)
    first = launch(site, 1)
    workdir = Path(first.workdir)
    probe = 'test "$(cat "$2")" = secret-token && pwd'
    first = PilotLaunch(
        pilot_id=1,
        site=site,
        workdir=first.workdir,
        token_file=first.token_file,
        pilot_argv=("/bin/sh", "-c", probe, "pilot", "--token-file", first.token_file, "--scratch", "/nowhere"),
    )
    with pytest.raises(SchedulerError, match="Can't open"):
        await sched.submit(first)  # condor_submit checks that the input files exist: no token yet
    _write(Path(first.token_file), "secret-token")
    batch_id = await sched.submit(first)
    commands = fake.condor_ad(batch_id)["commands"]
    assert (commands["should_transfer_files"], commands["when_to_transfer_output"]) == ("YES", "ON_EXIT")
    assert commands["transfer_input_files"] == first.token_file

    node = tmp_path / "execute" / "dir_4242"
    done = _run_on_execute_node(workdir, node, tmp_path / "not-visible")
    assert (done.returncode, done.stdout.strip()) == (0, str(node)), done.stderr


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _run_on_execute_node(workdir: Path, node: Path, hidden: Path) -> subprocess.CompletedProcess[str]:
    """Run the pilot's wrapper as HTCondor would on an execute node without the shared filesystem:
    in its own scratch directory, with the transferred files, and the submit side's directory gone."""
    node.mkdir(parents=True)
    for name in ("pilot.sh", "token"):
        (node / name).write_bytes((workdir / name).read_bytes())
    (node / "pilot.sh").chmod(0o700)
    workdir.rename(hidden)
    env = {**os.environ, "_CONDOR_SCRATCH_DIR": str(node)}
    return subprocess.run([str(node / "pilot.sh")], env=env, capture_output=True, text=True, timeout=30)


def test_htcondor_without_a_shared_filesystem_needs_direct_network(tmp_path: Path) -> None:
    raw = {
        "site": {
            "name": "hpc1",
            "server_url": "https://glidein.example.org",
            "token_file": str(tmp_path / "t"),
            "scratch_dir": str(tmp_path / "scratch"),
            "scheduler": "htcondor",
            "network": "none",
        },
        "batch": {"shared_filesystem": False},
        "mailbox": {"dir": str(tmp_path / "mailbox")},
        "staging": {"dir": str(tmp_path / "staging")},
    }
    with pytest.raises(ConfigError) as err:
        HTCondorScheduler(parse_site_config(raw, CONFIG), LocalRunner())
    assert err.value.fields["field"] == "batch.shared_filesystem"


def test_htcondor_wrapper_ends_the_pilot_at_its_walltime(tmp_path: Path) -> None:
    # allowed_execute_duration is ignored by 9.0 and may not apply from 9.7 to 24.0.18
    # (HTCONDOR-3633): the wrapper enforces the walltime itself; exit code 124 reads as TIMEOUT.
    site = site_config(tmp_path, "htcondor")
    sched = HTCondorScheduler(site, LocalRunner())
    base = launch(site, 1)
    Path(base.workdir).mkdir(parents=True)

    def run(argv: tuple[str, ...]) -> int:
        wrapper = sched.render_wrapper(PilotLaunch(1, site, base.workdir, base.token_file, argv))
        assert "exec timeout --signal=TERM --kill-after=60 3600 " in wrapper
        script = tmp_path / "pilot.sh"
        script.write_text(wrapper.replace("--kill-after=60 3600 ", "--kill-after=1 1 "))  # an hour is long for a test
        return subprocess.run(["/bin/bash", str(script)], capture_output=True, timeout=30).returncode

    started = time.monotonic()
    assert run(("sleep", "30")) == 124
    assert run(("/bin/sh", "-c", "trap '' TERM; sleep 30")) in (124, 137, -9)  # TERM ignored: KILL 1 s later
    assert time.monotonic() - started < 15
    ad = {"ClusterId": 5, "ProcId": 0, "JobStatus": 4, "ExitCode": 124, "GlideinTag": "glidein-hpc1-1"}
    ((job, _),) = sched._jobs([ad])
    assert (job.state, job.reason) == (PilotState.TIMEOUT, "ended at its walltime by its wrapper (exit code 124)")


@pytest.mark.parametrize(
    ("rule", "words"),
    [
        (("MaxCpus", None), "the pool's submit requirement MaxCpus is not met"),
        (("MaxCpus", "Pilots may ask for at most 2 CPUs here."), "Pilots may ask for at most 2 CPUs here."),
    ],
)
async def test_htcondor_submit_requirement_is_named(tmp_path: Path, rule: tuple[str, str | None], words: str) -> None:
    fake = FakeBatch(tmp_path / "batch")
    with fakebatch.locked_state(str(fake.dir)) as state:
        state["condor"]["submit_requirement"] = list(rule)
    site = site_config(tmp_path, "htcondor")
    with pytest.raises(SchedulerError) as err:
        await HTCondorScheduler(site, LocalRunner(), env=fake.env).submit(launch(site, 1))
    assert words in err.value.message and "pool's admin" in err.value.message
    assert "Failed to commit" not in (err.value.hint or "")
    assert err.value.fields["field"] == "pilot.cpus"


async def test_condor_release_limit_removes_the_pilot(tmp_path: Path) -> None:
    fake = FakeBatch(tmp_path / "batch")
    site = site_config(tmp_path, "htcondor")
    sched = HTCondorScheduler(site, LocalRunner(), env=fake.env)
    batch_id = await sched.submit(launch(site, 1))
    fake.condor_hold(batch_id, 12, "Transfer output files failure")
    with fakebatch.locked_state(str(fake.dir)) as state:
        state["condor"]["release_spent"] = [batch_id]
    await sched.release([batch_id])
    assert fake.calls("condor_rm") == [["condor_rm", batch_id]]
    assert await sched.status() == []
