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
import json
import logging
import posixpath
import re
import shlex
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

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

Flavour = Literal["pro", "torque"]
FLAVOUR_NAMES: dict[str, str] = {"pro": "PBS Pro", "torque": "Torque"}

SCRIPT = "pilot.pbs"
STDOUT = "pilot.out"  # stdout and stderr together (-j oe)

#: PBS Pro / OpenPBS ``job_state`` (Reference Guide 2022.1, "Job States").
PBS_PRO_STATES: dict[str, PilotState] = {
    "Q": PilotState.QUEUED,  # queued, eligible to run or be routed
    "T": PilotState.QUEUED,  # in transit to a new location
    "W": PilotState.QUEUED,  # waiting for its execution time (or after a failed stage-in)
    "R": PilotState.RUNNING,
    "E": PilotState.RUNNING,  # exiting after having run: still holds its nodes
    "B": PilotState.RUNNING,  # array job begun (pilots are never arrays)
    "H": PilotState.HELD,
    "S": PilotState.HELD,  # suspended by the server (preemption)
    "U": PilotState.HELD,  # suspended because its workstation is busy
    "M": PilotState.UNKNOWN,  # moved to another server: this server no longer knows its fate
    "F": PilotState.DONE,  # finished: refined by the exit status
    "X": PilotState.DONE,  # finished subjob: refined by the exit status
}

#: Torque ``job_state`` (Torque 6.1 qstat); also what Slurm's Torque wrapper prints.
TORQUE_STATES: dict[str, PilotState] = {
    "Q": PilotState.QUEUED,
    "T": PilotState.QUEUED,
    "W": PilotState.QUEUED,
    "R": PilotState.RUNNING,
    "E": PilotState.RUNNING,  # exiting after having run
    "H": PilotState.HELD,
    "S": PilotState.HELD,  # suspended
    "C": PilotState.DONE,  # completed: refined by the exit status
    "U": PilotState.UNKNOWN,  # Slurm's wrapper: a Slurm state it has no letter for
}

FINISHED_LETTERS = frozenset({"F", "X", "C"})
#: Exit statuses that mean "killed for exceeding its walltime".
WALLTIME_EXIT = {"pro": -29, "torque": -11}
#: PBS Pro history substate of a job ended by qdel (JOB_SUBSTATE_TERMINATED).
PRO_SUBSTATE_TERMINATED = 91
#: 256 + SIGTERM: how PBS reports a job that died of the signal qdel sends.
EXIT_SIGTERM = 271

QDEL_CHUNK = 100
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
_JOB_ID = re.compile(r"^\d+(\[\d*\])?(\.[A-Za-z0-9_.-]+)?$")
_CTIME_FORMAT = "%a %b %d %H:%M:%S %Y"
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


def parse_walltime(value: Any) -> int | None:
    """``HH:MM:SS`` / ``MM:SS`` / seconds -> seconds; None when unreadable."""
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    parts = value.strip().split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        return None
    total = 0
    for part in parts:
        total = total * 60 + int(part)
    return total


def parse_ctime(value: Any) -> float | None:
    """PBS time stamps (``Sun Nov 22 05:00:00 2026``, local time, or epoch seconds) -> epoch."""
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return time.mktime(time.strptime(value.strip(), _CTIME_FORMAT))
    except ValueError:
        return None


def pbs_word(value: str) -> str:
    """Quote ``value`` for a ``#PBS`` line: bare when safe, else in double quotes."""
    if "\n" in value or "\r" in value:
        raise ValueError("line break")
    if _SAFE_WORD.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def detect_flavour(result: CommandResult) -> Flavour:
    """The flavour behind the answer to ``qstat --version``."""
    text = f"{result.stdout}\n{result.stderr}"
    if re.search(r"pbs_version\s*=", text, re.I):
        return "pro"
    return "torque"


@dataclass(frozen=True)
class QstatRecord:
    """What glidein reads of one job in ``qstat -f`` output (either flavour)."""

    batch_id: str
    name: str
    state: str
    exit_status: int | None = None
    substate: int | None = None
    qtime: float | None = None
    used_walltime_s: int | None = None
    walltime_limit_s: int | None = None
    comment: str = ""


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _load_pbs_json(text: str) -> Any:
    """PBS Pro's JSON; some versions write invalid escapes or raw control characters."""
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError:
        repaired = re.sub(r'\\(?!["\\/bfnrtu])', r"\\\\", text)
        return json.loads(repaired, strict=False)


def parse_qstat_json(text: str) -> list[QstatRecord]:
    """Jobs in the output of PBS Pro's ``qstat -f -F json [-x]``."""
    if not text.strip():
        return []
    try:
        doc = _load_pbs_json(text)
    except json.JSONDecodeError as exc:
        raise SchedulerError(
            f"qstat printed JSON that glidein cannot read ({exc.msg} at line {exc.lineno}).",
            hint="Check `qstat -f -F json -x` by hand; the next cycle tries again.",
        ) from None
    jobs = doc.get("Jobs") if isinstance(doc, dict) else None
    if not isinstance(jobs, dict):
        return []
    records = []
    for batch_id, attrs in jobs.items():
        if not isinstance(attrs, dict):
            continue
        used = attrs.get("resources_used")
        limits = attrs.get("Resource_List")
        records.append(
            QstatRecord(
                batch_id=str(batch_id),
                name=str(attrs.get("Job_Name", "")),
                state=str(attrs.get("job_state", "")),
                exit_status=_int_or_none(attrs.get("Exit_status")),
                substate=_int_or_none(attrs.get("substate")),
                qtime=parse_ctime(attrs.get("qtime")),
                used_walltime_s=parse_walltime(used.get("walltime")) if isinstance(used, dict) else None,
                walltime_limit_s=parse_walltime(limits.get("walltime")) if isinstance(limits, dict) else None,
                comment=str(attrs.get("comment", "")),
            )
        )
    return records


_ATTR_LINE = re.compile(r"^(?P<indent> {4}|\t)(?P<key>[A-Za-z_][\w.]*) = (?P<value>.*)$")


def parse_qstat_full(text: str) -> list[QstatRecord]:
    """Jobs in the output of Torque's ``qstat -f`` (also PBS Pro's and Slurm's wrapper's text form).

    Each job starts with ``Job Id: <id>``; attributes follow as ``    key = value`` (Torque,
    PBS Pro) or ``<TAB>key = value`` (Slurm's wrapper, which never wraps). Torque and PBS Pro
    go on with a long value (``Variable_List``) in lines that start with a tab.
    """
    blocks: list[tuple[str, dict[str, str]]] = []
    indent = ""  # how the attributes of the current job are indented
    last_key: str | None = None
    for raw in text.splitlines():
        if raw.startswith("Job Id:"):
            blocks.append((raw[len("Job Id:") :].strip(), {}))
            indent, last_key = "", None
            continue
        if not blocks or not raw.strip():
            continue
        attrs = blocks[-1][1]
        match = _ATTR_LINE.match(raw)
        if match and indent in ("", match["indent"]):
            indent, last_key = match["indent"], match["key"]
            attrs[last_key] = match["value"].strip()
        elif last_key is not None:
            attrs[last_key] += raw.strip()
    return [
        QstatRecord(
            batch_id=batch_id,
            name=attrs.get("Job_Name", ""),
            state=attrs.get("job_state", ""),
            exit_status=_int_or_none(attrs.get("exit_status", attrs.get("Exit_status"))),
            substate=_int_or_none(attrs.get("substate")),
            qtime=parse_ctime(attrs.get("qtime")),
            used_walltime_s=parse_walltime(attrs.get("resources_used.walltime")),
            walltime_limit_s=parse_walltime(attrs.get("Resource_List.walltime")),
            comment=attrs.get("comment", ""),
        )
        for batch_id, attrs in blocks
    ]


def finished_state(record: QstatRecord, flavour: Flavour) -> tuple[PilotState, str]:
    """The end state of a finished job (``F``/``X``/``C``) and why, from its exit status."""
    code = record.exit_status
    if code is None:
        if flavour == "pro":
            return PilotState.CANCELLED, "deleted before it ran (no exit status)"
        return PilotState.DONE, "ended; the batch system reports no exit status"
    if code == WALLTIME_EXIT[flavour]:
        return PilotState.TIMEOUT, f"killed at its walltime (exit status {code})"
    used, limit = record.used_walltime_s, record.walltime_limit_s
    if code >= 128 and used is not None and limit is not None and used >= limit:
        return PilotState.TIMEOUT, f"killed by a signal after its full walltime (exit status {code})"
    if flavour == "pro" and record.substate == PRO_SUBSTATE_TERMINATED:
        return PilotState.CANCELLED, f"deleted (exit status {code})"
    if code == 0:
        return PilotState.DONE, ""
    if flavour == "torque" and code == EXIT_SIGTERM:
        return PilotState.CANCELLED, f"ended by SIGTERM, as qdel sends (exit status {code})"
    if code < 0:
        return PilotState.FAILED, f"the batch system could not run it (exit status {code})"
    return PilotState.FAILED, f"exit status {code}"


def parse_job_id(stdout: str) -> str | None:
    """The job id qsub prints: ``1234.server`` (PBS), ``1234`` (Slurm's wrapper)."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if not lines:
        return None
    token = lines[-1].split()[-1]
    return token if _JOB_ID.match(token) else None


@dataclass(frozen=True)
class _Refusal:
    """One kind of qsub refusal: what it says, and which config key to change."""

    pattern: re.Pattern[str]
    what: str  # str.format()ted with the site's values
    key: str
    also: str = ""


_REFUSALS = (
    _Refusal(
        re.compile(
            r"Unknown queue|Invalid partition|invalid partition specified|"
            r"Queue is not enabled|Queue is not started|rejected by all possible destinations",
            re.I,
        ),
        "the queue {partition!r} does not exist or takes no jobs",
        "batch.partition",
    ),
    _Refusal(
        re.compile(
            r"does not have access to the queue|not permitted to use this partition|"
            r"Access denied to partition|Unauthorized Request",
            re.I,
        ),
        "this user may not use the queue {partition!r}",
        "batch.partition",
    ),
    _Refusal(
        re.compile(r"Invalid account|Bad account|invalid project", re.I),
        "the account {account!r} is not valid here",
        "batch.account",
    ),
    _Refusal(re.compile(r"Invalid qos|\bqos\b", re.I), "the QOS {qos!r} is not valid here", "batch.qos"),
    _Refusal(
        re.compile(r"Unknown resource|Invalid feature specification", re.I),
        "it does not know a resource in {constraint!r}",
        "batch.constraint",
        also=" (and `batch.extra_directives`)",
    ),
    _Refusal(
        re.compile(r"walltime|time limit", re.I),
        "the walltime {walltime} is more than the queue {partition!r} allows",
        "pilot.walltime",
        also=" (or choose another `batch.partition`)",
    ),
    _Refusal(re.compile(r"\bmem\b|memory", re.I), "no node or queue offers {memory_mb} MB of memory", "pilot.memory"),
    _Refusal(re.compile(r"\bngpus\b|\bgpus\b|\bgres\b", re.I), "no node or queue offers {gpus} GPU(s)", "pilot.gpus"),
    _Refusal(
        re.compile(r"\bncpus\b|\bppn\b|\bprocs\b|More processors requested", re.I),
        "no node or queue offers {cpus} CPUs",
        "pilot.cpus",
    ),
    _Refusal(
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
    _Refusal(
        re.compile(r"invalid option -- '?n'?", re.I),
        "it does not take -n (node-exclusive), which `pilot.whole_node` asks for",
        "pilot.whole_node",
    ),
    _Refusal(
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


class PbsScheduler:
    """Submits pilots with ``qsub``; lists them with one ``qstat``; cancels them with ``qdel``.

    ``env`` is added to the environment of every command (e.g. ``PBS_SERVER``). ``flavour``
    is ``"pro"`` (PBS Professional, OpenPBS) or ``"torque"`` (Torque, and Slurm's Torque
    wrapper); left out, it is detected with ``qstat --version`` before the first command.
    """

    name = "pbs"
    command_timeout_s = 60.0

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
        self.site = site
        self.runner = runner
        self.env: dict[str, str] | None = dict(env) if env else None
        self.flavour: Flavour | None = flavour
        self._detect_lock = asyncio.Lock()
        self._states: dict[str, StateTable] = {
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
            "job_name": self._word(launch.tag, "the pilot's name"),
            "resources": self._resources(site, flavour),
            "walltime": format_walltime(site.shape.walltime_s),
            "output": self._word(posixpath.join(workdir, STDOUT), "the pilot's work directory"),
            "directive_lines": "\n".join(f"#PBS {d}" for d in self._directives(site, flavour)),
            "flavour": FLAVOUR_NAMES[flavour],
            "config": site.path.replace("\n", " "),
            "env_setup_lines": "\n".join(site.batch.env_setup),
            "workdir": shlex.quote(workdir),
            "pilot_command_lines": shlex.join(launch.pilot_argv),
        }
        # Every value above is already quoted for where it goes (#PBS line or shell).
        return render_template("pbs.sh", values, quote=False)

    async def submit(self, launch: PilotLaunch) -> str:
        await self.detect_flavour()
        script = self.render(launch)
        path = posixpath.join(launch.workdir, SCRIPT)
        await self.runner.makedirs(launch.workdir, mode=0o700)
        await self.runner.write_file(path, script.encode(), mode=0o700)
        output = posixpath.join(launch.workdir.rstrip("/") or "/", STDOUT)
        result = await self._run(["qsub", "-j", "oe", "-o", output, path])
        if result.returncode != 0:
            raise self.submit_error(result)
        for line in result.stderr.splitlines():
            if line.strip():
                log.warning("qsub (pilot %s): %s", launch.tag, line.strip())
        batch_id = parse_job_id(result.stdout)
        if batch_id is None:
            raise SchedulerError(
                f"qsub accepted the pilot {launch.tag} but printed no job id: {result.stdout.strip()!r}.",
                hint="Check that `qsub` on this host is PBS's or Torque's.",
                command=list(result.argv),
                exit_code=result.returncode,
                stderr=result.stderr,
            )
        log.info("submitted pilot %s as PBS job %s", launch.tag, batch_id)
        return batch_id

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

    async def cancel(self, batch_ids: list[str]) -> None:
        if not batch_ids:
            return
        bad = [b for b in batch_ids if not _JOB_ID.match(b)]
        if bad:
            raise SchedulerError(
                f"Cannot cancel {', '.join(map(repr, bad))}: not a PBS job id.",
                hint="This is a bug in the caller: pass ids that submit() or status() returned.",
            )
        for start in range(0, len(batch_ids), QDEL_CHUNK):
            chunk = batch_ids[start : start + QDEL_CHUNK]
            result = await self._run(["qdel", *chunk])
            if result.returncode == 0:
                continue
            lines = [ln.strip() for ln in f"{result.stderr}\n{result.stdout}".splitlines() if ln.strip()]
            serious = [ln for ln in lines if not _GONE.search(ln)]
            if serious:
                raise SchedulerError(
                    f"qdel could not cancel every pilot: {serious[-1]}",
                    hint="The next cycle tries again; check the jobs with `qstat`.",
                    command=list(result.argv),
                    exit_code=result.returncode,
                    stderr=result.stderr,
                )
            log.debug("qdel: jobs already gone: %s", "; ".join(lines) or f"exit code {result.returncode}")
        log.info("cancelled %d PBS job(s): %s", len(batch_ids), " ".join(batch_ids))

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
        state = self._states[flavour].map(native)
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

    def submit_error(self, result: CommandResult) -> SchedulerError:
        """A plain message for a qsub refusal, naming the config key to change."""
        fields = {
            "command": list(result.argv),
            "exit_code": result.returncode,
            "stderr": result.stderr,
            "stdout": result.stdout,
        }  # Slurm's Torque wrapper reports sbatch's refusal on stdout
        detail = _detail(result)
        text = f"{result.stderr}\n{result.stdout}"
        if _TRANSIENT.search(text):
            return SchedulerError(
                f"qsub could not reach the PBS server: {detail}.",
                hint="The next cycle tries again; if this persists, check the server on this host (`qstat -B`).",
                **fields,
            )
        site, batch, shape = self.site, self.site.batch, self.site.shape
        for refusal in _REFUSALS:
            if refusal.pattern.search(text) is None:
                continue
            what = refusal.what.format(
                partition=batch.partition or "(default)",
                account=batch.account or "(default)",
                qos=batch.qos or "(default)",
                constraint=batch.constraint or "",
                walltime=format_walltime(shape.walltime_s),
                memory_mb=shape.memory_mb,
                cpus=shape.cpus,
                gpus=shape.gpus,
            )
            return SchedulerError(
                f"qsub refused the pilot: {what} — check `{refusal.key}`{refusal.also} in {site.path}.",
                hint=f"(qsub said: {detail})",
                field=refusal.key,
                **fields,
            )
        return SchedulerError(
            f"qsub refused the pilot: {detail}.",
            hint=f"Check the [pilot] and [batch] sections of {site.path}.",
            **fields,
        )

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
        extra = f":{self._word(constraint, 'batch.constraint', config=True)}" if constraint else ""
        if flavour == "pro":
            gpus = f":ngpus={shape.gpus}" if shape.gpus else ""
            return f"select=1:ncpus={shape.cpus}:mem={shape.memory_mb}mb{gpus}{extra}"
        gpus = f":gpus={shape.gpus}" if shape.gpus else ""
        return f"nodes=1:ppn={shape.cpus}{gpus}{extra},mem={shape.memory_mb}mb"

    def _directives(self, site: SiteConfig, flavour: Flavour) -> list[str]:
        batch = site.batch
        out: list[str] = []
        if batch.partition:
            out.append(f"-q {self._word(batch.partition, 'batch.partition', config=True)}")
        if batch.account:
            out.append(f"-A {self._word(batch.account, 'batch.account', config=True)}")
        if batch.qos and flavour == "torque":
            out.append(f"-l qos={self._word(batch.qos, 'batch.qos', config=True)}")
        if site.whole_node:
            out.append("-l place=excl" if flavour == "pro" else "-n")
        out.extend(self._extra_directives(batch.extra_directives))
        return out

    def _extra_directives(self, lines: Iterable[str]) -> list[str]:
        out = []
        for line in lines:
            line = line.strip()
            if "\n" in line or "\r" in line:
                raise self._config_error("batch.extra_directives", "an entry has a line break")
            if line.startswith("#PBS"):
                line = line[len("#PBS") :].strip()
            if line:
                out.append(line)
        return out

    def _word(self, value: str, what: str, *, config: bool = False) -> str:
        try:
            return pbs_word(value)
        except ValueError:
            if config:
                raise self._config_error(what, "the value has a line break") from None
            raise SchedulerError(
                f"Cannot write a PBS script: {what} {value!r} has a line break.",
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
