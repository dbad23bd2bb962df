"""The Slurm backend: pilots are batch jobs submitted with ``sbatch``.

- ``render`` fills ``templates/slurm.sh``: ``#SBATCH`` directives from the pilot shape and the
  ``[batch]`` section of the site config, the site's set-up lines, then ``exec`` of the pilot.
- ``submit`` writes the script to ``<workdir>/pilot.sbatch`` (through the runner, so it works on a
  remote login node too) and runs ``sbatch --parsable``. A refusal becomes a
  :class:`SchedulerError` that names the config key to change.
- ``status`` is one ``squeue`` call for all of this user's jobs, kept to this site's pilots by
  their job name (``glidein-<site>-<pilot_id>``), with ``--states=all`` so that jobs that ended
  within the cluster's ``MinJobAge`` are seen with their final state.
- ``cancel`` is one ``scancel`` call for any number of jobs.

Native job states map through :data:`NATIVE_STATES`; walltime expiry (``TIMEOUT``) is TIMEOUT,
never FAILED.
"""

from __future__ import annotations

import logging
import math
import posixpath
import re
import shlex
from datetime import datetime

from glidein_client.site.config import SiteConfig
from glidein_client.site.runners.local import CommandResult
from glidein_client.site.schedulers.base import (
    BatchScheduler,
    PilotJob,
    PilotLaunch,
    PilotState,
    Refusal,
    StateTable,
    directive_word,
    pilot_id_from_tag,
    render_template,
)

log = logging.getLogger(__name__)

SCRIPT = "pilot.sbatch"
STDOUT = "pilot.out"
STDERR = "pilot.err"

#: Slurm job states (``squeue --format=%T``, Slurm 22.05) and what they mean for a pilot.
NATIVE_STATES: dict[str, PilotState] = {
    # Waiting for resources, or about to start: the pilot has not run yet.
    "PENDING": PilotState.QUEUED,
    "CONFIGURING": PilotState.QUEUED,  # nodes allocated, still booting: the pilot has not started
    "REQUEUED": PilotState.QUEUED,  # put back into the queue; it will run again
    "REQUEUE_FED": PilotState.QUEUED,  # requeued by a federation sibling
    "POWER_UP_NODE": PilotState.QUEUED,  # waiting for a powered-down node
    # The pilot runs (or still holds its allocation while it winds down).
    "RUNNING": PilotState.RUNNING,
    "COMPLETING": PilotState.RUNNING,  # processes ending; the allocation is still held
    "SIGNALING": PilotState.RUNNING,  # a signal is on its way to the running job
    "STAGE_OUT": PilotState.RUNNING,  # burst-buffer stage-out after the run; still allocated
    "RESIZING": PilotState.RUNNING,  # a running job changing size
    # Stopped or parked: it keeps its place but will not go on without someone acting.
    "SUSPENDED": PilotState.SUSPENDED,  # started, then suspended (preemption, scontrol suspend)
    "STOPPED": PilotState.SUSPENDED,  # SIGSTOPped, keeps its CPUs
    "REQUEUE_HOLD": PilotState.HELD,  # requeued and held
    "RESV_DEL_HOLD": PilotState.HELD,  # held because its reservation was deleted
    "SPECIAL_EXIT": PilotState.HELD,  # requeued held after a special exit code; needs a release
    # Ended.
    "COMPLETED": PilotState.DONE,
    "FAILED": PilotState.FAILED,  # non-zero exit code, or the job could not start
    "NODE_FAIL": PilotState.FAILED,
    "BOOT_FAIL": PilotState.FAILED,
    "OUT_OF_MEMORY": PilotState.FAILED,
    "DEADLINE": PilotState.FAILED,  # --deadline passed (pilots set none; not the walltime)
    "TIMEOUT": PilotState.TIMEOUT,  # walltime expired
    "CANCELLED": PilotState.CANCELLED,
    # Ended by the batch system to make room for other work: neither the pilot's fault nor the
    # site's, so it must not count as a failure. (Preemption that requeues shows as REQUEUED,
    # and preemption that suspends as SUSPENDED.)
    "PREEMPTED": PilotState.CANCELLED,
    "REVOKED": PilotState.CANCELLED,  # a federation sibling ran it elsewhere
}

#: Reasons that make a PENDING job a held one (``scontrol hold``, a failed launch).
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin", "launch failed requeued held"})

#: ``squeue`` fields: job id, state, submit time, reason, then the job name last, so that a
#: name with the separator in it (another user's job) cannot shift the other fields.
SQUEUE_FORMAT = "%i|%T|%V|%r|%j"
_SQUEUE_FIELDS = 5

_JOB_ID = re.compile(r"^\d+(_\d+)?$")
#: scancel complaints that mean the job is gone already: the goal of a cancel is reached.
_GONE = re.compile(r"already completing or completed|Invalid job id specified|Job has already finished", re.I)
_TRANSIENT = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Zero Bytes were transmitted|"
    r"Slurm temporarily unable|Resource temporarily unavailable|slurm_load_jobs error",
    re.I,
)


def format_time_limit(walltime_s: int) -> str:
    """Slurm ``--time`` in ``D-HH:MM:SS``, rounded up to whole minutes."""
    minutes = max(1, math.ceil(walltime_s / 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00"


def sbatch_word(value: str, *, filename: bool = False) -> str:
    """Quote ``value`` for a ``#SBATCH`` line (sbatch's own parser, not a shell).

    Inside double quotes sbatch takes a backslash as an escape, so ``\\`` and ``"`` are
    escaped. For ``--output``/``--error`` a ``%`` is doubled so it is not a filename pattern.
    """
    return directive_word(value.replace("%", "%%") if filename else value)


def parse_submit_time(text: str) -> float | None:
    """``2024-05-01T10:00:00`` (the login node's local time) -> epoch seconds."""
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None  # N/A, Unknown


def parse_squeue(text: str, site: str, states: StateTable) -> list[PilotJob]:
    """This site's pilots in the output of ``squeue --noheader --format=SQUEUE_FORMAT``."""
    jobs: list[PilotJob] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("|", _SQUEUE_FIELDS - 1)
        if len(fields) != _SQUEUE_FIELDS:
            log.debug("squeue line not understood, skipped: %r", line)
            continue
        batch_id, native, submitted, reason, name = (f.strip() for f in fields)
        pilot_id = pilot_id_from_tag(site, name)
        if pilot_id is None:
            continue
        state = states.map(native)
        if state is PilotState.QUEUED and reason in HELD_REASONS:
            state = PilotState.HELD
        jobs.append(
            PilotJob(
                batch_id=batch_id,
                pilot_id=pilot_id,
                state=state,
                native_state=native,
                submitted_at=parse_submit_time(submitted),
                reason="" if reason == "None" else reason,
            )
        )
    return jobs


def parse_job_id(stdout: str) -> str | None:
    """The job id that ``sbatch --parsable`` prints: ``123`` or ``123;cluster``."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return None
    job_id = lines[-1].split(";", 1)[0].strip()
    return job_id if job_id.isdigit() else None


REFUSALS = (
    Refusal(
        re.compile(r"invalid partition specified: (?P<value>\S+)|Invalid partition name", re.I),
        "invalid partition {partition!r}",
        "batch.partition",
    ),
    Refusal(
        re.compile(r"not permitted to use this partition|Access denied to partition", re.I),
        "this user may not use partition {partition!r}",
        "batch.partition",
    ),
    Refusal(
        re.compile(r"Invalid account", re.I),
        "invalid account {account!r} (or account and partition do not go together)",
        "batch.account",
    ),
    Refusal(re.compile(r"Invalid qos", re.I), "invalid QOS {qos!r}", "batch.qos"),
    Refusal(
        re.compile(r"Requested time limit is invalid|Invalid --time", re.I),
        "the walltime {walltime} is more than partition {partition!r} allows",
        "pilot.walltime",
        also=" (or choose another `batch.partition`)",
    ),
    Refusal(
        re.compile(r"Memory specification can not be satisfied|Memory required by task|Invalid --mem", re.I),
        "no node offers {memory_mb} MB of memory",
        "pilot.memory",
    ),
    Refusal(re.compile(r"More processors requested than permitted", re.I), "no node offers {cpus} CPUs", "pilot.cpus"),
    Refusal(
        re.compile(r"Invalid generic resource|Invalid gres", re.I),
        "the cluster offers no {gpus} GPU(s) as gres 'gpu'",
        "pilot.gpus",
    ),
    Refusal(
        re.compile(r"Invalid feature specification", re.I), "invalid constraint {constraint!r}", "batch.constraint"
    ),
    Refusal(
        re.compile(r"Requested node configuration is not available", re.I),
        "no node has {cpus} CPUs, {memory_mb} MB and {gpus} GPU(s){constraint_text}",
        "pilot.cpus",
        also=", `pilot.memory`, `pilot.gpus` and `batch.constraint`",
    ),
    Refusal(
        re.compile(r"violates accounting/QOS policy|AssocMaxSubmitJob|QOSMaxSubmitJob", re.I),
        "the pilot is over an accounting or QOS limit",
        "batch.account",
        also=" and `batch.qos`, or lower `limits.max_pilots`",
    ),
    Refusal(
        re.compile(
            r"unrecognized option|invalid option|Invalid .* specification|"
            r"option requires an argument",
            re.I,
        ),
        "a directive is not valid",
        "batch.extra_directives",
    ),
)


class SlurmScheduler(BatchScheduler):
    """Submits pilots to Slurm with ``sbatch``; lists them with one ``squeue``; cancels with ``scancel``.

    ``env`` is added to the environment of every command (e.g. ``SLURM_CONF``).
    """

    name = "slurm"
    label = "Slurm"
    submit_tool = "sbatch"
    cancel_tool = "scancel"
    status_tool = "squeue --me"
    directive_prefix = "#SBATCH"
    script_name = SCRIPT
    job_id = _JOB_ID
    native_states = NATIVE_STATES
    refusals = REFUSALS
    transient = _TRANSIENT
    gone = _GONE
    unreachable = "could not reach the Slurm controller"
    cancel_chunk = 10_000  # one scancel for any number of jobs

    def render(self, launch: PilotLaunch) -> str:
        site = launch.site
        workdir = launch.workdir.rstrip("/") or "/"
        values = {
            "job_name": self._word(launch.tag, "the pilot's name"),
            "workdir": self._word(workdir, "the pilot's work directory"),
            "output": self._word(posixpath.join(workdir, STDOUT), "the pilot's work directory", filename=True),
            "error": self._word(posixpath.join(workdir, STDERR), "the pilot's work directory", filename=True),
            "time_limit": format_time_limit(site.shape.walltime_s),
            "directive_lines": "\n".join(f"#SBATCH {d}" for d in self._directives(site)),
            "config": site.path.replace("\n", " "),
            "env_setup_lines": "\n".join(site.batch.env_setup),
            "pilot_command_lines": shlex.join(launch.pilot_argv),
        }
        # Every value above is already quoted for where it goes (sbatch or shell).
        return render_template("slurm.sh", values, quote=False)

    def submit_argv(self, launch: PilotLaunch, path: str) -> list[str]:
        return ["sbatch", "--parsable", path]

    def parse_job_id(self, stdout: str) -> str | None:
        return parse_job_id(stdout)

    async def status(self) -> list[PilotJob]:
        result = await self._run(["squeue", "--me", "--states=all", "--noheader", f"--format={SQUEUE_FORMAT}"])
        result.check(
            "Listing this site's pilots with squeue",
            hint="Check that Slurm answers on this host (`squeue --me`); the next cycle tries again.",
        )
        return parse_squeue(result.stdout, self.site.name, self._states)

    def refusal_values(self) -> dict[str, object]:
        return {**super().refusal_values(), "walltime": format_time_limit(self.site.shape.walltime_s)}

    def detail(self, result: CommandResult) -> str:
        lines = [ln.strip() for ln in (result.stderr.strip() or result.stdout.strip()).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower() or "unrecognized" in ln.lower()] or lines
        if not errors:
            return f"exit code {result.returncode}"
        return re.sub(r"^sbatch:\s*(error:\s*)?", "", errors[-1])

    def cancel_done(self, line: str) -> bool:
        return "error" not in line.lower()  # scancel says nothing on success; only its errors count

    def _directives(self, site: SiteConfig) -> list[str]:
        shape, batch = site.shape, site.batch
        out: list[str] = []
        if site.whole_node:
            out += ["--exclusive", "--mem=0"]  # the whole node: all its cores and memory
        else:
            out += [f"--cpus-per-task={shape.cpus}", f"--mem={shape.memory_mb}M"]
        if shape.gpus > 0:
            out.append(f"--gres=gpu:{shape.gpus}")
        if site.signal_grace_s:
            # SIGTERM to the batch shell only (which execs the pilot, so its jobs are not signalled),
            # pilot.signal_grace before the time limit: the pilot lets the jobs that fit finish.
            out.append(f"--signal=B:TERM@{site.signal_grace_s}")
        for key, option in (
            ("partition", "--partition"),
            ("account", "--account"),
            ("qos", "--qos"),
            ("constraint", "--constraint"),
        ):
            value = getattr(batch, key)
            if value:
                out.append(f"{option}={self.word(value, f'batch.{key}', config=True)}")
        return out + self.extra_directives()

    def _word(self, value: str, what: str, *, filename: bool = False) -> str:
        return self.word(value.replace("%", "%%") if filename else value, what)
