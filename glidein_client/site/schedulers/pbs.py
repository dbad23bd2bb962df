"""The PBS backend (PBS Professional / OpenPBS and Torque): pilots are jobs submitted with ``qsub``.

Two flavours speak different dialects; the ``flavour`` argument picks one, and when it is
left out the backend asks ``qstat --version`` once, before its first submit or status:
PBS Pro and OpenPBS print ``pbs_version = 2022.1.3``, Torque prints ``Version: 6.1.3``.
Anything else (Slurm's Torque wrapper rejects ``--version``) is treated as Torque, the
dialect such wrappers speak. The site config has no key for this.

- ``render`` fills ``templates/pbs.sh``: ``#PBS`` directives from the pilot shape and the
  ``[batch]`` section, the site's set-up lines, then ``exec`` of the pilot. PBS Pro asks for
  ``-l select=1:ncpus=N:mem=Mmb[:ngpus=G][:<constraint>]``, Torque for
  ``-l nodes=1:ppn=N[:gpus=G][:<constraint>],mem=Mmb``; ``batch.partition`` is the queue
  (``-q``), ``batch.account`` the account (``-A``), ``batch.qos`` becomes ``-l qos=`` on Torque
  (Moab) and is refused on PBS Pro, which has no QOS. ``pilot.disk`` has no portable PBS
  resource and is not requested. ``pilot.whole_node`` adds ``-l place=excl`` (PBS Pro) or
  ``-n`` (Torque; Slurm's Torque wrapper refuses it).
- ``submit`` writes ``<workdir>/pilot.pbs`` through the runner and runs
  ``qsub -j oe -o <workdir>/pilot.out <script>``: the output options repeat the script's
  directives because Slurm's Torque wrapper ignores those and would otherwise write the
  output into the client's working directory. The job id is the last line qsub prints
  (``1234.server``). A refusal becomes a :class:`SchedulerError` that names the config key
  to change.
- ``status`` is one command: ``qstat -f -F json -x`` on PBS Pro (finished jobs included
  where the server keeps job history), ``qstat -f`` on Torque (completed jobs are listed
  for the server's ``keep_completed`` seconds). Jobs are kept to this site's pilots by
  their name, ``glidein-<site>-<pilot_id>``.
- ``cancel`` is ``qdel`` with the ids (in chunks); ids that are gone already are not an error.

Native states map through :data:`PBS_PRO_STATES` and :data:`TORQUE_STATES`. A finished job
(``F`` / ``C``) is judged by its exit status, see :func:`finished_state`: 0 is DONE; the
walltime kill (PBS Pro ``Exit_status`` -29, JOB_EXEC_KILL_WALLTIME; Torque ``exit_status``
-11, JOB_EXEC_OVERLIMIT_WT; or any signal death after the full walltime was used) is
TIMEOUT; a deleted job (PBS Pro substate 91, or finished without ever getting an exit
status; Torque exit status 271, the SIGTERM that ``qdel`` sends) is CANCELLED; anything
else is FAILED.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import re
import shlex
from collections.abc import Mapping

from glidein_client.site.config import SiteConfig
from glidein_client.site.runners.local import CommandResult, Runner
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
from glidein_client.site.schedulers.pbs_qstat import (
    FINISHED_LETTERS,
    FLAVOUR_NAMES,
    PBS_PRO_STATES,
    TORQUE_STATES,
    Flavour,
    QstatRecord,
    detect_flavour,
    finished_state,
    parse_qstat_full,
    parse_qstat_json,
)
from glidein_client.wire.errors import ConfigError, SchedulerError

log = logging.getLogger(__name__)

SCRIPT = "pilot.pbs"
STDOUT = "pilot.out"  # stdout and stderr together (-j oe)

QDEL_CHUNK = 100
_JOB_ID = re.compile(r"^\d+(\[\d*\])?(\.[A-Za-z0-9_.-]+)?$")
#: qdel complaints that mean the job is gone already: the goal of a cancel is reached.
_GONE = re.compile(
    r"Unknown Job Id|has finished|nonexistent job|invalid state for job - COMPLETE|"
    r"Job has already finished|already completing or completed|Invalid job id",
    re.I,
)
_TRANSIENT = re.compile(
    r"cannot connect to server|Connection refused|pbs_iff|Communication failure|"
    r"Server unavailable|Unable to contact slurm controller|Socket timed out|timed out",
    re.I,
)


def format_walltime(walltime_s: int) -> str:
    """PBS ``walltime`` in ``HH:MM:SS`` (hours may pass 24)."""
    hours, rest = divmod(max(1, walltime_s), 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}"


def pbs_word(value: str) -> str:
    """Quote ``value`` for a ``#PBS`` line: bare when safe, else in double quotes."""
    return directive_word(value)


def parse_job_id(stdout: str) -> str | None:
    """The job id qsub prints: ``1234.server`` (PBS), ``1234`` (Slurm's wrapper)."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return None
    token = lines[-1].split()[-1]
    return token if _JOB_ID.match(token) else None


REFUSALS = (
    Refusal(
        re.compile(
            r"Unknown queue|Invalid partition|invalid partition specified|"
            r"Queue is not enabled|Queue is not started|rejected by all possible destinations",
            re.I,
        ),
        "the queue {partition!r} does not exist or takes no jobs",
        "batch.partition",
    ),
    Refusal(
        re.compile(
            r"does not have access to the queue|not permitted to use this partition|"
            r"Access denied to partition|Unauthorized Request",
            re.I,
        ),
        "this user may not use the queue {partition!r}",
        "batch.partition",
    ),
    Refusal(
        re.compile(r"Invalid account|Bad account|invalid project", re.I),
        "the account {account!r} is not valid here",
        "batch.account",
    ),
    Refusal(re.compile(r"Invalid qos|\bqos\b", re.I), "the QOS {qos!r} is not valid here", "batch.qos"),
    Refusal(
        re.compile(r"Unknown resource|Invalid feature specification", re.I),
        "it does not know a resource in {constraint!r}",
        "batch.constraint",
        also=" (and `batch.extra_directives`)",
    ),
    Refusal(
        re.compile(r"walltime|time limit", re.I),
        "the walltime {walltime} is more than the queue {partition!r} allows",
        "pilot.walltime",
        also=" (or choose another `batch.partition`)",
    ),
    Refusal(re.compile(r"\bmem\b|memory", re.I), "no node or queue offers {memory_mb} MB of memory", "pilot.memory"),
    Refusal(re.compile(r"\bngpus\b|\bgpus\b|\bgres\b", re.I), "no node or queue offers {gpus} GPU(s)", "pilot.gpus"),
    Refusal(
        re.compile(r"\bncpus\b|\bppn\b|\bprocs\b|More processors requested", re.I),
        "no node or queue offers {cpus} CPUs",
        "pilot.cpus",
    ),
    Refusal(
        re.compile(
            r"violates queue and/or server resource limits|exceeds queue resource limits|"
            r"Requested node configuration is not available|Insufficient amount of resource|"
            r"Illegal attribute or resource value",
            re.I,
        ),
        "the pilot ({cpus} CPUs, {memory_mb} MB, {gpus} GPU(s), {walltime}) is over a limit of the queue {partition!r}",
        "pilot.cpus",
        also=", `pilot.memory`, `pilot.gpus`, `pilot.walltime` and `batch.partition`",
    ),
    Refusal(
        re.compile(r"invalid option -- '?n'?", re.I),
        "it does not take -n (node-exclusive), which `pilot.whole_node` asks for",
        "pilot.whole_node",
    ),
    Refusal(
        re.compile(r"illegal -\w|invalid option|unrecognized option|usage: qsub|directive error", re.I),
        "a directive is not valid",
        "batch.extra_directives",
    ),
)


def _detail(result: CommandResult) -> str:
    """The most telling line of a complaint (qsub, or sbatch behind Slurm's wrapper)."""
    lines = [ln.strip().strip("'").strip() for ln in f"{result.stderr}\n{result.stdout}".splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("The command was", "and the output was"))]
    telling = [
        ln
        for ln in lines
        if re.search(
            r"error|unknown|invalid|illegal|violates|exceeds|"
            r"refused|denied|rejected|not |cannot",
            ln,
            re.I,
        )
    ]
    chosen = (telling or lines or [f"exit code {result.returncode}"])[-1]
    return re.sub(r"^(qsub|sbatch):\s*(submit error\s*)?(error:\s*)?", "", chosen).strip()


class PbsScheduler(BatchScheduler):
    """Submits pilots with ``qsub``; lists them with one ``qstat``; cancels them with ``qdel``.

    ``env`` is added to the environment of every command (e.g. ``PBS_SERVER``). ``flavour``
    is ``"pro"`` (PBS Professional, OpenPBS) or ``"torque"`` (Torque, and Slurm's Torque
    wrapper); left out, it is detected with ``qstat --version`` before the first command.
    """

    name = "pbs"
    label = "PBS"
    submit_tool = "qsub"
    cancel_tool = "qdel"
    status_tool = "qstat"
    directive_prefix = "#PBS"
    script_name = SCRIPT
    job_id = _JOB_ID
    native_states = PBS_PRO_STATES
    refusals = REFUSALS
    transient = _TRANSIENT
    gone = _GONE
    unreachable = "could not reach the PBS server"
    cancel_chunk = QDEL_CHUNK
    silent_failure_is_gone = True  # Slurm's Torque wrapper: qdel of a finished job exits 1, silently

    def __init__(
        self,
        site: SiteConfig,
        runner: Runner,
        *,
        env: Mapping[str, str] | None = None,
        flavour: Flavour | None = None,
    ) -> None:
        if flavour is not None and flavour not in FLAVOUR_NAMES:
            raise ValueError(f"flavour must be 'pro' or 'torque', not {flavour!r}")
        super().__init__(site, runner, env=env)
        self.flavour: Flavour | None = flavour
        self._detect_lock = asyncio.Lock()
        self._tables: dict[str, StateTable] = {
            "pro": StateTable("pbs", dict(PBS_PRO_STATES)),
            "torque": StateTable("torque", dict(TORQUE_STATES)),
        }
        if flavour is not None:
            self._check_config(flavour)

    # --- Scheduler protocol ------------------------------------------------------------------

    def render(self, launch: PilotLaunch) -> str:
        flavour = self.flavour
        if flavour is None:
            raise SchedulerError(
                "The PBS flavour (PBS Pro or Torque) is not known yet, so no script can be written.",
                hint="Await detect_flavour() first, or pass flavour='pro' or 'torque'.",
            )
        site = launch.site
        workdir = launch.workdir.rstrip("/") or "/"
        values = {
            "job_name": self.word(launch.tag, "the pilot's name"),
            "resources": self._resources(site, flavour),
            "walltime": format_walltime(site.shape.walltime_s),
            "output": self.word(posixpath.join(workdir, STDOUT), "the pilot's work directory"),
            "directive_lines": "\n".join(f"#PBS {d}" for d in self._directives(site, flavour)),
            "flavour": FLAVOUR_NAMES[flavour],
            "config": site.path.replace("\n", " "),
            "env_setup_lines": "\n".join(site.batch.env_setup),
            "workdir": shlex.quote(workdir),
            "pilot_command_lines": shlex.join(launch.pilot_argv),
        }
        # Every value above is already quoted for where it goes (#PBS line or shell).
        return render_template("pbs.sh", values, quote=False)

    async def prepare(self) -> None:
        await self.detect_flavour()

    def submit_argv(self, launch: PilotLaunch, path: str) -> list[str]:
        # The output options repeat the script's: Slurm's Torque wrapper reads only these.
        return ["qsub", "-j", "oe", "-o", posixpath.join(launch.workdir.rstrip("/") or "/", STDOUT), path]

    def parse_job_id(self, stdout: str) -> str | None:
        return parse_job_id(stdout)

    async def status(self) -> list[PilotJob]:
        flavour = await self.detect_flavour()
        argv = ["qstat", "-f", "-F", "json", "-x"] if flavour == "pro" else ["qstat", "-f"]
        result = await self._run(argv)
        # qstat exits 153 (unknown job) with nothing to say when no job is there: Slurm's wrapper.
        if result.returncode != 0 and not (result.returncode == 153 and not result.stdout.strip()):
            result.check(
                "Listing this site's pilots with qstat",
                hint="Check that the PBS server answers on this host (`qstat`); the next cycle tries again.",
            )
        records = parse_qstat_json(result.stdout) if flavour == "pro" else parse_qstat_full(result.stdout)
        return [job for job in (self.to_pilot_job(r, flavour) for r in records) if job is not None]

    # --- flavour ---------------------------------------------------------------------------------

    async def detect_flavour(self) -> Flavour:
        """The flavour, asking ``qstat --version`` the first time (then remembered)."""
        if self.flavour is not None:
            return self.flavour
        async with self._detect_lock:
            if self.flavour is None:
                result = await self._run(["qstat", "--version"])
                flavour = detect_flavour(result)
                self._check_config(flavour)
                self.flavour = flavour
                log.info(
                    "PBS flavour of site %s: %s (qstat --version: %s)",
                    self.site.name,
                    FLAVOUR_NAMES[flavour],
                    (result.stdout.strip() or result.stderr.strip()).splitlines()[:1],
                )
            return self.flavour

    # --- mapping ---------------------------------------------------------------------------------

    def to_pilot_job(self, record: QstatRecord, flavour: Flavour) -> PilotJob | None:
        """A :class:`PilotJob` for one of this site's pilots, None for any other job."""
        pilot_id = pilot_id_from_tag(self.site.name, record.name)
        if pilot_id is None:
            return None
        native = record.state.strip().upper()
        state = self._tables[flavour].map(native)
        reason = record.comment if state in (PilotState.QUEUED, PilotState.HELD) else ""
        if native in FINISHED_LETTERS:
            state, reason = finished_state(record, flavour)
        return PilotJob(
            batch_id=record.batch_id,
            pilot_id=pilot_id,
            state=state,
            native_state=native,
            submitted_at=record.qtime,
            reason=reason,
        )

    # --- helpers -------------------------------------------------------------------------------

    def refusal_values(self) -> dict[str, object]:
        return {**super().refusal_values(), "walltime": format_walltime(self.site.shape.walltime_s)}

    def detail(self, result: CommandResult) -> str:
        return _detail(result)

    def _check_config(self, flavour: Flavour) -> None:
        if flavour == "pro" and self.site.batch.qos:
            raise ConfigError(
                f"Site config {self.site.path}: `batch.qos` is set, but PBS Pro has no QOS.",
                hint="Remove `batch.qos`; choose a queue with `batch.partition`, or add the site's "
                "own directive to `batch.extra_directives`.",
                field="batch.qos",
            )

    def _resources(self, site: SiteConfig, flavour: Flavour) -> str:
        shape, constraint = site.shape, site.batch.constraint
        extra = f":{self.word(constraint, 'batch.constraint', config=True)}" if constraint else ""
        if flavour == "pro":
            gpus = f":ngpus={shape.gpus}" if shape.gpus else ""
            return f"select=1:ncpus={shape.cpus}:mem={shape.memory_mb}mb{gpus}{extra}"
        gpus = f":gpus={shape.gpus}" if shape.gpus else ""
        return f"nodes=1:ppn={shape.cpus}{gpus}{extra},mem={shape.memory_mb}mb"

    def _directives(self, site: SiteConfig, flavour: Flavour) -> list[str]:
        batch = site.batch
        out: list[str] = []
        if batch.partition:
            out.append(f"-q {self.word(batch.partition, 'batch.partition', config=True)}")
        if batch.account:
            out.append(f"-A {self.word(batch.account, 'batch.account', config=True)}")
        if batch.qos and flavour == "torque":
            out.append(f"-l qos={self.word(batch.qos, 'batch.qos', config=True)}")
        if site.whole_node:
            out.append("-l place=excl" if flavour == "pro" else "-n")
        return out + self.extra_directives()
