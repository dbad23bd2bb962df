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
- ``status`` is one command, run with ``TZ=UTC`` (qstat writes ``ctime()`` times in the zone
  of the host it runs on): ``qstat -f -F json -x`` on PBS Pro (finished jobs included where
  the server keeps job history), ``qstat -f`` on Torque (completed jobs are listed for the
  server's ``keep_completed`` seconds). A PBS Pro server without job history
  (``job_history_enable`` off, its default) answers ``-x`` with the JSON header alone and
  exit 0; the backend then warns once and lists with ``qstat -f -F json``: queued and
  running pilots still count, finished ones drop out of the list. Jobs are kept to this
  site's pilots by their name, ``glidein-<site>-<pilot_id>``; another user's job whose
  name OpenPBS prints as a bare number (``.123``) cannot break the listing.
- ``cancel`` is ``qdel`` with the ids (in chunks); ids that are gone already are not an error.

Native states map through :data:`PBS_PRO_STATES` and :data:`TORQUE_STATES`. A finished job
(``F`` / ``C``) is judged by its exit status, see :func:`finished_state`: 0 is DONE; the
walltime kill (PBS Pro ``Exit_status`` -29, JOB_EXEC_KILL_WALLTIME; Torque ``exit_status``
-11, JOB_EXEC_OVERLIMIT_WT; or any signal death after the full walltime was used) is
TIMEOUT; a deleted job (PBS Pro substate 91, or finished without ever getting an exit
status; Torque exit status 271, the SIGTERM that ``qdel`` sends, or C without an exit
status before it ever ran) is CANCELLED; anything else is FAILED. A suspended job (``S``,
``U``) is SUSPENDED: it has run and keeps its place, so it is never removed as waiting.
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
    warning_timer,
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
    history_disabled,
    parse_qstat_full,
    parse_qstat_json,
)
from glidein_client.site.schedulers.pbs_refusals import (
    LIMIT_REFUSALS,
    REFUSALS,
    UNKNOWN_RESOURCE,
    unknown_resource_refusal,
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
    r"Job has already finished|already completing or completed|Invalid job id|"
    # pbs_messages.c msg_badstate: the job is exiting or in transit; it is on its way out.
    r"Request invalid for state of job",
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


#: With pilot.signal_grace: the script's timeout kills the pilot this long after the walltime, should PBS not.
KILL_AFTER_S = 60


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
        self.history = True  # PBS Pro: ask for finished jobs too (qstat -x) until the server says it keeps none
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
            "pilot_command_lines": shlex.join([*self._warning(site), *launch.pilot_argv]),
        }
        # Every value above is already quoted for where it goes (#PBS line or shell).
        return render_template("pbs.sh", values, quote=False)

    @staticmethod
    def _warning(site: SiteConfig) -> list[str]:
        """PBS sends no warning before the walltime: with ``pilot.signal_grace`` the script's ``timeout``
        sends the pilot SIGTERM that long before it (PBS itself ends the job at the walltime)."""
        if not site.signal_grace_s:
            return []
        seconds, kill_after_s = warning_timer(site, KILL_AFTER_S)
        return ["timeout", "--signal=TERM", f"--kill-after={kill_after_s}", str(seconds)]

    async def prepare(self) -> None:
        await self.detect_flavour()

    def submit_argv(self, launch: PilotLaunch, path: str) -> list[str]:
        # The output options repeat the script's: Slurm's Torque wrapper reads only these.
        return ["qsub", "-j", "oe", "-o", posixpath.join(launch.workdir.rstrip("/") or "/", STDOUT), path]

    def parse_job_id(self, stdout: str) -> str | None:
        return parse_job_id(stdout)

    async def status(self) -> list[PilotJob]:
        flavour = await self.detect_flavour()
        if flavour == "torque":
            result = await self._qstat(["qstat", "-f"])
            return self._pilots(parse_qstat_full(result.stdout, utc=True), flavour)
        result = await self._qstat(["qstat", "-f", "-F", "json", *(["-x"] if self.history else [])])
        if self.history and history_disabled(result):
            # job_history_enable is off (the server's default): qstat -x printed only the header
            # and exited 0. Without -x the queued and running pilots are listed; finished ones
            # leave the list at once, and how they ended is not known.
            self.history = False
            log.warning(
                "The PBS server of site %s keeps no job history (job_history_enable is off): glidein "
                "lists queued and running pilots only and cannot tell how a pilot ended. Ask the "
                "site's admin to run: qmgr -c 'set server job_history_enable = True'",
                self.site.name,
            )
            result = await self._qstat(["qstat", "-f", "-F", "json"])
        return self._pilots(parse_qstat_json(result.stdout, utc=True), flavour)

    async def _qstat(self, argv: list[str]) -> CommandResult:
        # TZ=UTC: qstat writes its times with ctime() in the zone of the host it runs on.
        result = await self.runner.run(argv, env={**(self.env or {}), "TZ": "UTC"}, timeout_s=self.command_timeout_s)
        # qstat exits 153 (unknown job) with nothing to say when no job is there: Slurm's wrapper.
        if result.returncode != 0 and not (result.returncode == 153 and not result.stdout.strip()):
            result.check(
                "Listing this site's pilots with qstat",
                hint="Check that the PBS server answers on this host (`qstat`); the next cycle tries again.",
            )
        return result

    def _pilots(self, records: list[QstatRecord], flavour: Flavour) -> list[PilotJob]:
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
        reason = record.comment if state in (PilotState.QUEUED, PilotState.HELD, PilotState.SUSPENDED) else ""
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

    def choose_refusal(self, text: str) -> tuple[Refusal, re.Match[str]] | None:
        """As the base, but an unknown resource is blamed on the key that asked for it."""
        match = UNKNOWN_RESOURCE.search(text)
        if match is None or any(r.pattern.search(text) for r in LIMIT_REFUSALS):
            return super().choose_refusal(text)
        return unknown_resource_refusal(match["resource"], self.site), match

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
