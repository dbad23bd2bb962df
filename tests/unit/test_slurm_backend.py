"""The Slurm backend without Slurm: script rendering (golden files), squeue parsing, errors.

The squeue and sbatch texts below are what Slurm 22.05.8 (Debian 12) prints.
Set GLIDEIN_UPDATE_GOLDEN=1 to rewrite the golden files after an intended change.
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from glidein_client.site.config import SiteConfig, parse_site_config
from glidein_client.site.runners.local import CommandResult
from glidein_client.site.schedulers.base import PilotLaunch, PilotState, StateTable
from glidein_client.site.schedulers.slurm import (
    NATIVE_STATES,
    SQUEUE_FORMAT,
    SlurmScheduler,
    format_time_limit,
    parse_job_id,
    parse_squeue,
    parse_submit_time,
    sbatch_word,
)
from glidein_client.wire.errors import ConfigError, SchedulerError
from tests.golden_files import check_golden

SLURM_VERSION = "22.05.8"  # the Slurm that printed the texts in this file


def site_config(
    pilot: dict[str, Any] | None = None, batch: dict[str, Any] | None = None, name: str = "hpc1"
) -> SiteConfig:
    raw: dict[str, Any] = {
        "site": {
            "name": name,
            "server_url": "https://glidein.example.org",
            "token_file": "/etc/glidein/site.token",
            "scratch_dir": "/scratch/glidein",
            "scheduler": "slurm",
        },
        "pilot": pilot or {},
        "batch": batch or {},
    }
    return parse_site_config(raw, "/etc/glidein/hpc1.toml")


def launch(
    site: SiteConfig,
    pilot_id: int = 7,
    workdir: str = "/scratch/glidein/pilots/7",
    argv: tuple[str, ...] = ("glidein-pilot", "run", "--token-file", "/scratch/glidein/pilots/7/token"),
) -> PilotLaunch:
    return PilotLaunch(pilot_id=pilot_id, site=site, workdir=workdir, token_file=f"{workdir}/token", pilot_argv=argv)


FULL = site_config(
    pilot={"cpus": 8, "memory": "16G", "gpus": 2, "walltime": 95_000},
    batch={
        "partition": "gpu",
        "account": "phys-123",
        "qos": "long",
        "constraint": "a100&ib",
        "extra_directives": ["--mail-type=NONE", "#SBATCH --signal=B:TERM@120", "--licenses=scratch:1"],
        "env_setup": ["module load python/3.11", 'export GLIDEIN_SITE_TAG="hpc1 full"'],
        "python": "/opt/python/bin/python3",
    },
)


# --- rendering ----------------------------------------------------------------------------------


def test_render_basic_matches_golden() -> None:
    site = site_config()
    check_golden("slurm_basic.sh", SlurmScheduler(site, FakeRunner()).render(launch(site)))


def test_render_full_matches_golden() -> None:
    argv = ("/opt/python/bin/python3", "-m", "glidein_client.pilot", "run", "--label", "it's a test")
    text = SlurmScheduler(FULL, FakeRunner()).render(
        launch(FULL, pilot_id=42, workdir="/scratch/my site/100%/pilot-42/", argv=argv)
    )
    check_golden("slurm_full.sh", text)


def test_render_whole_node_matches_golden() -> None:
    site = site_config(pilot={"whole_node": True, "walltime": "2d"}, batch={"partition": "cpu"})
    check_golden("slurm_whole_node.sh", SlurmScheduler(site, FakeRunner()).render(launch(site)))


def test_render_directives_come_before_any_command() -> None:
    text = SlurmScheduler(FULL, FakeRunner()).render(launch(FULL))
    lines = text.splitlines()
    first_command = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#"))
    assert all(not ln.startswith("#SBATCH") for ln in lines[first_command:])
    assert "#SBATCH --signal=B:TERM@120" in lines  # a prefixed directive is not prefixed twice
    assert lines[-1].startswith("exec ")


def test_render_refuses_line_breaks_in_directives() -> None:
    site = site_config(batch={"extra_directives": ["--mail-type=NONE\n/bin/rm -rf /"]})
    with pytest.raises(ConfigError, match="batch.extra_directives"):
        SlurmScheduler(site, FakeRunner()).render(launch(site))
    site = site_config(batch={"partition": "gpu\nrm"})
    with pytest.raises(ConfigError, match="batch.partition"):
        SlurmScheduler(site, FakeRunner()).render(launch(site))


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (60, "0-00:01:00"),
        (61, "0-00:02:00"),
        (3600, "0-01:00:00"),
        (86_400, "1-00:00:00"),
        (95_000, "1-02:24:00"),
        (30, "0-00:01:00"),
    ],
)
def test_time_limit_is_rounded_up_to_minutes(seconds: int, expected: str) -> None:
    assert format_time_limit(seconds) == expected


@pytest.mark.parametrize(
    ("value", "filename", "expected"),
    [
        ("/scratch/glidein/7", False, "/scratch/glidein/7"),
        ("/scratch/my site", False, '"/scratch/my site"'),
        ('a"b\\c', False, '"a\\"b\\\\c"'),
        ("/x/#y", False, '"/x/#y"'),
        ("/x/100%/out", True, "/x/100%%/out"),
        ("/x/100%/out", False, "/x/100%/out"),
    ],
)
def test_sbatch_word_quotes_for_sbatch(value: str, filename: bool, expected: str) -> None:
    assert sbatch_word(value, filename=filename) == expected


# --- squeue -----------------------------------------------------------------------------------

# `squeue --me --states=all --noheader --format=%i|%T|%V|%r|%j` on Slurm 22.05.8.
SQUEUE_22_05 = """\
3|FAILED|2024-05-01T10:00:58|BadConstraints|glidein-hpc1-3
101|PENDING|2024-05-01T10:01:02|Priority|glidein-hpc1-101
102|PENDING|2024-05-01T10:01:02|Resources|glidein-hpc1-102
103|RUNNING|2024-05-01T10:01:03|None|glidein-hpc1-103
104|COMPLETING|2024-05-01T10:01:03|None|glidein-hpc1-104
105|COMPLETED|2024-05-01T10:01:04|None|glidein-hpc1-105
106|TIMEOUT|2024-05-01T10:01:04|TimeLimit|glidein-hpc1-106
107|CANCELLED|2024-05-01T10:01:05|None|glidein-hpc1-107
108|PENDING|2024-05-01T10:01:05|JobHeldUser|glidein-hpc1-108
109|OUT_OF_MEMORY|2024-05-01T10:01:06|OutOfMemory|glidein-hpc1-109
110|NODE_FAIL|2024-05-01T10:01:06|NodeDown|glidein-hpc1-110
111|PREEMPTED|2024-05-01T10:01:07|None|glidein-hpc1-111
112|SUSPENDED|2024-05-01T10:01:07|None|glidein-hpc1-112
113|REQUEUED|2024-05-01T10:01:08|BeginTime|glidein-hpc1-113
114|RUNNING|2024-05-01T10:01:08|None|glidein-hpc2-114
115|RUNNING|2024-05-01T10:01:08|None|wrap
116|RUNNING|2024-05-01T10:01:09|None|glidein-hpc1-
117|PENDING|N/A|None|glidein-hpc1-117x
118|RUNNING|2024-05-01T10:01:10|None|a|name|with|bars
"""


def test_parse_squeue_keeps_this_sites_pilots_and_maps_states() -> None:
    jobs = parse_squeue(SQUEUE_22_05, "hpc1", StateTable("slurm", dict(NATIVE_STATES)))
    got = {j.batch_id: (j.pilot_id, j.state) for j in jobs}
    assert got == {
        "3": (3, PilotState.FAILED),
        "101": (101, PilotState.QUEUED),
        "102": (102, PilotState.QUEUED),
        "103": (103, PilotState.RUNNING),
        "104": (104, PilotState.RUNNING),
        "105": (105, PilotState.DONE),
        "106": (106, PilotState.TIMEOUT),
        "107": (107, PilotState.CANCELLED),
        "108": (108, PilotState.HELD),
        "109": (109, PilotState.FAILED),
        "110": (110, PilotState.FAILED),
        "111": (111, PilotState.CANCELLED),
        "112": (112, PilotState.SUSPENDED),
        "113": (113, PilotState.QUEUED),
    }
    by_id = {j.batch_id: j for j in jobs}
    assert by_id["106"].native_state == "TIMEOUT"
    assert by_id["106"].reason == "TimeLimit"
    assert by_id["103"].reason == ""  # Slurm's "None" is no reason
    assert by_id["101"].submitted_at == datetime(2024, 5, 1, 10, 1, 2).timestamp()


def test_parse_squeue_ignores_junk_lines() -> None:
    text = "squeue: some notice\n\n42|RUNNING|2024-05-01T10:00:00|None|glidein-hpc1-9\n"
    jobs = parse_squeue(text, "hpc1", StateTable("slurm", dict(NATIVE_STATES)))
    assert [(j.batch_id, j.pilot_id) for j in jobs] == [("42", 9)]


def test_unknown_native_state_is_unknown_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    table = StateTable("slurm", dict(NATIVE_STATES))
    text = "7|WARPED|2024-05-01T10:00:00|None|glidein-hpc1-7\n8|WARPED|2024-05-01T10:00:00|None|glidein-hpc1-8\n"
    with caplog.at_level(logging.WARNING):
        jobs = parse_squeue(text, "hpc1", table)
        parse_squeue(text, "hpc1", table)
    assert [j.state for j in jobs] == [PilotState.UNKNOWN, PilotState.UNKNOWN]
    warnings = [r for r in caplog.records if "WARPED" in r.getMessage()]
    assert len(warnings) == 1


def test_every_slurm_22_05_job_state_is_in_the_table() -> None:
    # The job states of `man squeue` (JOB STATE CODES), Slurm 22.05.
    states = (
        "BOOT_FAIL CANCELLED COMPLETED CONFIGURING COMPLETING DEADLINE FAILED NODE_FAIL OUT_OF_MEMORY "
        "PENDING PREEMPTED RUNNING RESV_DEL_HOLD REQUEUE_FED REQUEUE_HOLD REQUEUED RESIZING REVOKED "
        "SIGNALING SPECIAL_EXIT STAGE_OUT STOPPED SUSPENDED TIMEOUT"
    ).split()
    assert set(states) <= set(NATIVE_STATES)
    assert NATIVE_STATES["TIMEOUT"] is PilotState.TIMEOUT


def test_submit_time_parsing() -> None:
    assert parse_submit_time("2024-05-01T10:00:00") == datetime(2024, 5, 1, 10).timestamp()
    assert parse_submit_time("N/A") is None
    assert parse_submit_time("Unknown") is None


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [("123\n", "123"), ("123;cluster\n", "123"), ("", None), ("Submitted batch job 5\n", None)],
)
def test_parse_job_id(stdout: str, expected: str | None) -> None:
    assert parse_job_id(stdout) == expected


# --- commands through a fake runner -------------------------------------------------------------


@dataclass
class FakeRunner:
    """Records commands and files; answers commands from a queue of results."""

    answers: list[tuple[int, str, str]] = field(default_factory=list)
    calls: list[tuple[list[str], dict[str, str] | None]] = field(default_factory=list)
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)

    async def run(
        self, argv: list[str], *, stdin: bytes | None = None, env: dict[str, str] | None = None, timeout_s: float = 60.0
    ) -> CommandResult:
        self.calls.append((argv, env))
        code, out, err = self.answers.pop(0) if self.answers else (0, "", "")
        return CommandResult(tuple(argv), code, out, err)

    async def write_file(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        self.files[path] = (data, mode)

    async def read_file(self, path: str) -> bytes:
        return self.files[path][0]

    async def makedirs(self, path: str, *, mode: int = 0o700) -> None:
        self.dirs.append(path)


async def test_submit_writes_script_and_parses_id() -> None:
    site = site_config()
    runner = FakeRunner(answers=[(0, "4242;cluster\n", "")])
    sched = SlurmScheduler(site, runner, env={"SLURM_CONF": "/tmp/x/slurm.conf"})
    batch_id = await sched.submit(launch(site))
    assert batch_id == "4242"
    path = "/scratch/glidein/pilots/7/pilot.sbatch"
    assert runner.calls == [(["sbatch", "--parsable", path], {"SLURM_CONF": "/tmp/x/slurm.conf"})]
    data, mode = runner.files[path]
    assert data.decode() == sched.render(launch(site))
    assert stat.S_IMODE(mode) == 0o700


# Refusals as sbatch 22.05.8 prints them (stderr, exit code 1).
REFUSALS = [
    (
        "sbatch: error: invalid partition specified: gpu\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n",
        "batch.partition",
        "invalid partition 'gpu'",
    ),
    (
        "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified\n",
        "batch.account",
        "invalid account 'phys-123'",
    ),
    ("sbatch: error: Batch job submission failed: Invalid qos specification\n", "batch.qos", "invalid QOS 'long'"),
    (
        "sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)\n",
        "pilot.walltime",
        "walltime 1-02:24:00",
    ),
    (
        "sbatch: error: Memory specification can not be satisfied\n"
        "sbatch: error: Batch job submission failed: Requested node configuration is not available\n",
        "pilot.memory",
        "16384 MB",
    ),
    (
        "sbatch: error: Batch job submission failed: Requested node configuration is not available\n",
        "pilot.cpus",
        "8 CPUs",
    ),
    ("sbatch: error: Batch job submission failed: More processors requested than permitted\n", "pilot.cpus", "8 CPUs"),
    ("sbatch: error: Invalid generic resource (gres) specification\n", "pilot.gpus", "2 GPU"),
    ("sbatch: error: Batch job submission failed: Invalid feature specification\n", "batch.constraint", "'a100&ib'"),
    (
        "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy "
        "(job submit limit, user's size and/or time limits)\n",
        "batch.account",
        "accounting or QOS limit",
    ),
    (
        "sbatch: unrecognized option '--foo'\nTry \"sbatch --help\" for more information\n",
        "batch.extra_directives",
        "directive",
    ),
]


@pytest.mark.parametrize(("stderr", "key", "words"), REFUSALS)
async def test_sbatch_refusal_names_the_config_key(stderr: str, key: str, words: str) -> None:
    runner = FakeRunner(answers=[(1, "", stderr)])
    with pytest.raises(SchedulerError) as info:
        await SlurmScheduler(FULL, runner).submit(launch(FULL))
    err = info.value
    assert err.message.startswith("sbatch refused the pilot: ")
    assert f"`{key}`" in err.message
    assert "/etc/glidein/hpc1.toml" in err.message
    assert words in err.message
    assert err.fields["field"] == key
    assert err.fields["exit_code"] == 1
    assert err.fields["stderr"] == stderr
    assert err.fields["command"][:2] == ["sbatch", "--parsable"]


async def test_sbatch_refusal_of_bad_partition_reads_like_the_docs() -> None:
    site = site_config(batch={"partition": "gpu"})
    runner = FakeRunner(answers=[(1, "", REFUSALS[0][0])])
    with pytest.raises(SchedulerError) as info:
        await SlurmScheduler(site, runner).submit(launch(site))
    assert info.value.message == (
        "sbatch refused the pilot: invalid partition 'gpu' — check `batch.partition` in /etc/glidein/hpc1.toml."
    )


async def test_sbatch_unreachable_controller_is_not_blamed_on_the_config() -> None:
    stderr = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n"
    runner = FakeRunner(answers=[(1, "", stderr)])
    with pytest.raises(SchedulerError) as info:
        await SlurmScheduler(FULL, runner).submit(launch(FULL))
    assert "could not reach the Slurm controller" in info.value.message
    assert "field" not in info.value.fields


async def test_sbatch_unknown_refusal_keeps_slurms_words() -> None:
    runner = FakeRunner(answers=[(1, "", "sbatch: error: Batch job submission failed: Something new\n")])
    with pytest.raises(SchedulerError) as info:
        await SlurmScheduler(FULL, runner).submit(launch(FULL))
    assert info.value.message == "sbatch refused the pilot: Batch job submission failed: Something new."
    assert info.value.fields["exit_code"] == 1


async def test_status_is_one_squeue_call() -> None:
    runner = FakeRunner(answers=[(0, SQUEUE_22_05, "")])
    jobs = await SlurmScheduler(site_config(), runner, env={"SLURM_CONF": "/c"}).status()
    assert len(jobs) == 14
    assert runner.calls == [
        (["squeue", "--me", "--states=all", "--noheader", f"--format={SQUEUE_FORMAT}"], {"SLURM_CONF": "/c"})
    ]


async def test_status_failure_is_a_scheduler_error() -> None:
    stderr = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
    runner = FakeRunner(answers=[(1, "", stderr)])
    with pytest.raises(SchedulerError) as info:
        await SlurmScheduler(site_config(), runner).status()
    assert "squeue" in info.value.message
    assert info.value.fields["stderr"] == stderr


async def test_cancel_is_one_scancel_call_and_nothing_for_no_ids() -> None:
    runner = FakeRunner()
    sched = SlurmScheduler(site_config(), runner)
    await sched.cancel([])
    assert runner.calls == []
    await sched.cancel(["11", "12", "13_4"])
    assert [c[0] for c in runner.calls] == [["scancel", "11", "12", "13_4"]]


async def test_cancel_ignores_jobs_that_are_gone() -> None:
    stderr = (
        "scancel: error: Kill job error on job id 11: Job/step already completing or completed\n"
        "scancel: error: Kill job error on job id 12: Invalid job id specified\n"
    )
    await SlurmScheduler(site_config(), FakeRunner(answers=[(1, "", stderr)])).cancel(["11", "12"])


async def test_cancel_raises_on_other_errors() -> None:
    stderr = (
        "scancel: error: Kill job error on job id 11: Job/step already completing or completed\n"
        "scancel: error: Kill job error on job id 12: Access/permission denied\n"
    )
    with pytest.raises(SchedulerError) as info:
        await SlurmScheduler(site_config(), FakeRunner(answers=[(1, "", stderr)])).cancel(["11", "12"])
    assert info.value.fields["exit_code"] == 1


async def test_cancel_refuses_what_is_not_a_job_id() -> None:
    runner = FakeRunner()
    with pytest.raises(SchedulerError, match="not a Slurm job id"):
        await SlurmScheduler(site_config(), runner).cancel(["12", "--user=root"])
    assert runner.calls == []
