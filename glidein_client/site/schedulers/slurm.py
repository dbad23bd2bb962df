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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from glidein_client.site.config import SiteConfig
from glidein_client.site.runners.local import CommandResult, Runner
from glidein_client.site.schedulers.base import (
    PilotJob,
    PilotLaunch,
    PilotState,
    StateTable,
    pilot_id_from_tag,
    render_template,
)
from glidein_client.wire.errors import ConfigError, SchedulerError

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
    "SUSPENDED": PilotState.HELD,
    "STOPPED": PilotState.HELD,  # SIGSTOPped, keeps its CPUs
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

_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
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
    if "\n" in value or "\r" in value:
        raise ValueError("line break")
    if filename:
        value = value.replace("%", "%%")
    if _SAFE_WORD.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


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


@dataclass(frozen=True)
class _Refusal:
    """One kind of sbatch refusal: what it says, and which config key to change."""

    pattern: re.Pattern[str]
    what: str  # str.format()ted with the site's values
    key: str
    also: str = ""


_REFUSALS = (
    _Refusal(
        re.compile(r"invalid partition specified: (?P<value>\S+)|Invalid partition name", re.I),
        "invalid partition {partition!r}",
        "batch.partition",
    ),
    _Refusal(
        re.compile(r"not permitted to use this partition|Access denied to partition", re.I),
        "this user may not use partition {partition!r}",
        "batch.partition",
    ),
    _Refusal(
        re.compile(r"Invalid account", re.I),
        "invalid account {account!r} (or account and partition do not go together)",
        "batch.account",
    ),
    _Refusal(re.compile(r"Invalid qos", re.I), "invalid QOS {qos!r}", "batch.qos"),
    _Refusal(
        re.compile(r"Requested time limit is invalid|Invalid --time", re.I),
        "the walltime {walltime} is more than partition {partition!r} allows",
        "pilot.walltime",
        also=" (or choose another `batch.partition`)",
    ),
    _Refusal(
        re.compile(r"Memory specification can not be satisfied|Memory required by task|Invalid --mem", re.I),
        "no node offers {memory_mb} MB of memory",
        "pilot.memory",
    ),
    _Refusal(re.compile(r"More processors requested than permitted", re.I), "no node offers {cpus} CPUs", "pilot.cpus"),
    _Refusal(
        re.compile(r"Invalid generic resource|Invalid gres", re.I),
        "the cluster offers no {gpus} GPU(s) as gres 'gpu'",
        "pilot.gpus",
    ),
    _Refusal(
        re.compile(r"Invalid feature specification", re.I), "invalid constraint {constraint!r}", "batch.constraint"
    ),
    _Refusal(
        re.compile(r"Requested node configuration is not available", re.I),
        "no node has {cpus} CPUs, {memory_mb} MB and {gpus} GPU(s){constraint_text}",
        "pilot.cpus",
        also=", `pilot.memory`, `pilot.gpus` and `batch.constraint`",
    ),
    _Refusal(
        re.compile(r"violates accounting/QOS policy|AssocMaxSubmitJob|QOSMaxSubmitJob", re.I),
        "the pilot is over an accounting or QOS limit",
        "batch.account",
        also=" and `batch.qos`, or lower `limits.max_pilots`",
    ),
    _Refusal(
        re.compile(
            r"unrecognized option|invalid option|Invalid .* specification|"
            r"option requires an argument",
            re.I,
        ),
        "a directive is not valid",
        "batch.extra_directives",
    ),
)


def _sbatch_detail(stderr: str, stdout: str, returncode: int) -> str:
    """The most telling line of sbatch's complaint, without the ``sbatch: error:`` prefix."""
    lines = [ln.strip() for ln in (stderr.strip() or stdout.strip()).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "unrecognized" in ln.lower()] or lines
    if not errors:
        return f"exit code {returncode}"
    line = errors[-1]
    return re.sub(r"^sbatch:\s*(error:\s*)?", "", line)


class SlurmScheduler:
    """Submits pilots to Slurm with ``sbatch``; lists them with one ``squeue``; cancels with ``scancel``.

    ``env`` is added to the environment of every command (e.g. ``SLURM_CONF``).
    """

    name = "slurm"
    command_timeout_s = 60.0

    def __init__(self, site: SiteConfig, runner: Runner, *, env: Mapping[str, str] | None = None) -> None:
        self.site = site
        self.runner = runner
        self.env: dict[str, str] | None = dict(env) if env else None
        self._states = StateTable("slurm", dict(NATIVE_STATES))

    # --- Scheduler protocol ------------------------------------------------------------------

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

    async def submit(self, launch: PilotLaunch) -> str:
        script = self.render(launch)
        path = posixpath.join(launch.workdir, SCRIPT)
        argv_path = path if not path.startswith("-") else f"./{path}"  # never read as an option
        await self.runner.makedirs(launch.workdir, mode=0o700)
        await self.runner.write_file(path, script.encode(), mode=0o700)
        result = await self._run(["sbatch", "--parsable", argv_path])
        if result.returncode != 0:
            raise self.submit_error(result)
        for line in result.stderr.splitlines():
            if line.strip():
                log.warning("sbatch (pilot %s): %s", launch.tag, line.strip())
        batch_id = parse_job_id(result.stdout)
        if batch_id is None:
            raise SchedulerError(
                f"sbatch accepted the pilot {launch.tag} but printed no job id: {result.stdout.strip()!r}.",
                hint="Check that `sbatch` on this host is Slurm's; glidein expects `sbatch --parsable` to work.",
                command=list(result.argv),
                exit_code=result.returncode,
                stderr=result.stderr,
            )
        log.info("submitted pilot %s as Slurm job %s", launch.tag, batch_id)
        return batch_id

    async def status(self) -> list[PilotJob]:
        result = await self._run(["squeue", "--me", "--states=all", "--noheader", f"--format={SQUEUE_FORMAT}"])
        result.check(
            "Listing this site's pilots with squeue",
            hint="Check that Slurm answers on this host (`squeue --me`); the next cycle tries again.",
        )
        return parse_squeue(result.stdout, self.site.name, self._states)

    async def cancel(self, batch_ids: list[str]) -> None:
        if not batch_ids:
            return
        bad = [b for b in batch_ids if not _JOB_ID.match(b)]
        if bad:
            raise SchedulerError(
                f"Cannot cancel {', '.join(map(repr, bad))}: not a Slurm job id.",
                hint="This is a bug in the caller: pass ids that submit() or status() returned.",
            )
        result = await self._run(["scancel", *batch_ids])
        complaints = [ln.strip() for ln in (result.stderr + "\n" + result.stdout).splitlines() if "error" in ln.lower()]
        serious = [ln for ln in complaints if not _GONE.search(ln)]
        if result.returncode != 0 and (serious or not complaints):
            result.check(
                f"Cancelling {len(batch_ids)} pilot(s) with scancel",
                hint="The next cycle tries again; check the jobs with `squeue --me`.",
            )
        elif serious:
            log.warning("scancel: %s", "; ".join(serious))
        log.info("cancelled %d Slurm job(s): %s", len(batch_ids), " ".join(batch_ids))

    # --- helpers -------------------------------------------------------------------------------

    def submit_error(self, result: CommandResult) -> SchedulerError:
        """A plain message for an sbatch refusal, naming the config key to change."""
        fields = {"command": list(result.argv), "exit_code": result.returncode, "stderr": result.stderr}
        detail = _sbatch_detail(result.stderr, result.stdout, result.returncode)
        text = f"{result.stderr}\n{result.stdout}"
        if _TRANSIENT.search(text):
            return SchedulerError(
                f"sbatch could not reach the Slurm controller: {detail}.",
                hint="The next cycle tries again; if this persists, check Slurm on this host (`sinfo`).",
                **fields,
            )
        site = self.site
        batch = site.batch
        shape = site.shape
        for refusal in _REFUSALS:
            match = refusal.pattern.search(text)
            if match is None:
                continue
            named = match.groupdict().get("value")
            what = refusal.what.format(
                partition=named or batch.partition or "(default)",
                account=batch.account or "(default)",
                qos=batch.qos or "(default)",
                constraint=batch.constraint or "",
                constraint_text=f" with constraint {batch.constraint!r}" if batch.constraint else "",
                walltime=format_time_limit(shape.walltime_s),
                memory_mb=shape.memory_mb,
                cpus=shape.cpus,
                gpus=shape.gpus,
            )
            return SchedulerError(
                f"sbatch refused the pilot: {what} — check `{refusal.key}`{refusal.also} in {site.path}.",
                hint=f"(sbatch said: {detail})",
                field=refusal.key,
                **fields,
            )
        return SchedulerError(
            f"sbatch refused the pilot: {detail}.",
            hint=f"Check the [pilot] and [batch] sections of {site.path}.",
            **fields,
        )

    def _directives(self, site: SiteConfig) -> list[str]:
        shape, batch = site.shape, site.batch
        out: list[str] = []
        if site.whole_node:
            out += ["--exclusive", "--mem=0"]  # the whole node: all its cores and memory
        else:
            out += [f"--cpus-per-task={shape.cpus}", f"--mem={shape.memory_mb}M"]
        if shape.gpus > 0:
            out.append(f"--gres=gpu:{shape.gpus}")
        for key, option in (
            ("partition", "--partition"),
            ("account", "--account"),
            ("qos", "--qos"),
            ("constraint", "--constraint"),
        ):
            value = getattr(batch, key)
            if value:
                out.append(f"{option}={self._word(value, f'batch.{key}', config=True)}")
        for line in batch.extra_directives:
            line = line.strip()
            if "\n" in line or "\r" in line:
                raise self._config_error("batch.extra_directives", "an entry has a line break")
            if line.startswith("#SBATCH"):
                line = line[len("#SBATCH") :].strip()
            if line:
                out.append(line)
        return out

    def _word(self, value: str, what: str, *, filename: bool = False, config: bool = False) -> str:
        try:
            return sbatch_word(value, filename=filename)
        except ValueError:
            if config:
                raise self._config_error(what, "the value has a line break") from None
            raise SchedulerError(
                f"Cannot write a Slurm script: {what} {value!r} has a line break.",
                hint=f"Choose a `site.scratch_dir` without line breaks in {self.site.path}.",
            ) from None

    def _config_error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(
            f"Site config {self.site.path}: `{key}`: {problem}.",
            hint="Write one directive per list entry, without line breaks.",
            field=key,
        )

    async def _run(self, argv: list[str]) -> CommandResult:
        return await self.runner.run(argv, env=self.env, timeout_s=self.command_timeout_s)
