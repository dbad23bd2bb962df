"""The LSF backend (IBM Spectrum LSF 10.1): pilots are jobs submitted with ``bsub < script``.

- ``render`` fills ``templates/lsf.sh``: ``#BSUB`` directives from the pilot shape and the
  ``[batch]`` section: ``-n <cpus>`` on one host (``span[hosts=1]``), memory as
  ``rusage[mem=<M>MB]`` and ``-M <M>MB``, GPUs as ``-gpu "num=<G>"`` (LSF 10.1.0.3 and
  later), ``-W H:MM`` (minutes, rounded up); ``batch.partition`` is the queue (``-q``),
  ``batch.account`` the project (``-P``), ``batch.constraint`` a ``select[...]`` string;
  ``pilot.whole_node`` adds ``-x``. LSF has no QOS: ``batch.qos`` is refused.
- ``submit`` writes ``<workdir>/pilot.lsf`` and runs ``bsub`` with the script on stdin: only
  then does bsub read the ``#BSUB`` lines (``bsub script`` would run it as a plain command
  unless the cluster sets ``LSB_BSUB_PARSE_SCRIPT``). bsub answers
  ``Job <1234> is submitted to queue <normal>.``; a refusal ends with ``Job not submitted.``
  (exit 255) and becomes a :class:`SchedulerError` that names the config key to change.
- ``status`` is one ``bjobs -a -json -o "<fields>" -J "glidein-<site>-*"`` call: this user's
  pilots of this site only (LSF's own name filter, trailing ``*`` wildcard), including
  those that ended within the cluster's ``CLEAN_PERIOD`` (default one hour).
- ``cancel`` is ``bkill`` with the ids; ids that are gone already are not an error.

``STAT`` maps through :data:`NATIVE_STATES`. An ``EXIT`` job is refined by its
``EXIT_REASON``: ``TERM_RUNLIMIT`` is TIMEOUT, ``TERM_OWNER``/``TERM_ADMIN`` (bkill) CANCELLED.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import shlex
import time

from glidein_client.site.schedulers.base import (
    BatchScheduler,
    PilotJob,
    PilotLaunch,
    PilotState,
    Refusal,
    pilot_id_from_tag,
    render_template,
)
from glidein_client.wire.errors import ConfigError, SchedulerError

SCRIPT = "pilot.lsf"
STDOUT = "pilot.out"
STDERR = "pilot.err"

#: ``bjobs -o`` fields, in this order (IBM Spectrum LSF 10.1 "bjobs -o" field names).
BJOBS_FIELDS = "jobid stat job_name submit_time exit_code exit_reason pend_reason"

#: LSF job states (``bjobs`` STAT, IBM Spectrum LSF 10.1 "Job states").
NATIVE_STATES: dict[str, PilotState] = {
    "PEND": PilotState.QUEUED,  # waiting in a queue to be scheduled
    "WAIT": PilotState.QUEUED,  # chunk-job member waiting to run
    "RUN": PilotState.RUNNING,
    "PROV": PilotState.RUNNING,  # dispatched; its host is being provisioned
    "PSUSP": PilotState.HELD,  # suspended by its owner or an admin while pending (bstop)
    "USUSP": PilotState.SUSPENDED,  # suspended by its owner or an admin while running
    "SSUSP": PilotState.SUSPENDED,  # suspended by LSF (load, a run window, preemption)
    "DONE": PilotState.DONE,  # exit code 0
    "EXIT": PilotState.FAILED,  # non-zero exit, or killed: refined by EXIT_REASON
    "UNKWN": PilotState.UNKNOWN,  # mbatchd lost contact with sbatchd on its host
    "ZOMBI": PilotState.UNKNOWN,  # killed while its host was unreachable
}

#: ``EXIT_REASON`` prefixes (LSF 10.1 "Termination reasons") that are not failures.
TIMEOUT_REASONS = ("TERM_RUNLIMIT",)
CANCEL_REASONS = ("TERM_OWNER", "TERM_ADMIN", "TERM_FORCE_OWNER", "TERM_FORCE_ADMIN", "TERM_PREEMPT")

_JOB_ID = re.compile(r"^\d+$")
_SUBMITTED = re.compile(r"Job <(\d+)> is submitted")
#: bkill answers meaning the job is gone already (lsb_errmsg: LSBE_NO_JOB, LSBE_JOB_FINISH).
_GONE = re.compile(r"No matching job found|Job has already finished", re.I)
_TRANSIENT = re.compile(
    r"LSF is down|Cannot connect to LSF|batch system daemon not responding|Failed in an LSF library call|"
    r"Slave LIM configuration is not ready|Timeout on connect",
    re.I,
)

#: bsub refusals (lsb_errmsg texts of LSF 10.1; bsub adds ``. Job not submitted.``).
REFUSALS = (
    Refusal(
        re.compile(r"No such queue|Queue has been closed|Bad queue name", re.I),
        "the queue {partition!r} does not exist or takes no jobs",
        "batch.partition",
    ),
    Refusal(
        re.compile(r"User cannot use the queue", re.I),
        "this user may not use the queue {partition!r}",
        "batch.partition",
    ),
    Refusal(
        re.compile(r"project|Bad user group", re.I),
        "the project {account!r} is not valid here",
        "batch.account",
    ),
    Refusal(
        re.compile(r"Bad resource requirement|Unknown resource|resource requirement syntax", re.I),
        "a resource requirement is not valid (constraint {constraint!r})",
        "batch.constraint",
        also=" (and `batch.extra_directives`)",
    ),
    Refusal(
        re.compile(r"run ?limit|RUNLIMIT|Bad time specification", re.I),
        "the walltime {walltime} is more than the queue {partition!r} allows",
        "pilot.walltime",
        also=" (or choose another `batch.partition`)",
    ),
    Refusal(
        re.compile(r"Cannot exceed queue's hard limit", re.I),
        "the pilot ({cpus} CPUs, {memory_mb} MB, walltime {walltime}) is over a hard limit of the queue {partition!r}",
        "pilot.walltime",
        also=", `pilot.memory` and `pilot.cpus` (or choose another `batch.partition`)",
    ),
    Refusal(re.compile(r"memory|MEMLIMIT", re.I), "no host or queue offers {memory_mb} MB of memory", "pilot.memory"),
    Refusal(re.compile(r"gpu", re.I), "no host or queue offers {gpus} GPU(s)", "pilot.gpus"),
    Refusal(
        re.compile(r"Too many (processors|tasks|slots) requested", re.I),
        "no host or queue offers {cpus} CPUs on one host",
        "pilot.cpus",
    ),
    Refusal(
        re.compile(r"per-user job slots|job limit|Too many jobs", re.I),
        "the queue {partition!r} takes no more jobs of this user",
        "limits.max_pilots",
        also=" (or ask the site's admin to raise the queue's per-user limit)",
    ),
    Refusal(
        re.compile(r"does not accept EXCLUSIVE jobs", re.I),
        "the queue {partition!r} takes no exclusive jobs, which `pilot.whole_node` asks for",
        "pilot.whole_node",
    ),
    Refusal(
        re.compile(r"Illegal option|Bad argument|invalid option", re.I),
        "a directive is not valid",
        "batch.extra_directives",
    ),
)


def format_run_limit(walltime_s: int) -> str:
    """``bsub -W`` in ``H:MM`` (hours may pass 24), rounded up to whole minutes."""
    hours, minutes = divmod(max(1, math.ceil(walltime_s / 60)), 60)
    return f"{hours}:{minutes:02d}"


def parse_job_id(stdout: str) -> str | None:
    """``Job <1234> is submitted to queue <normal>.`` -> ``1234``."""
    match = _SUBMITTED.search(stdout)
    return match.group(1) if match else None


def parse_submit_time(text: str, now: float) -> float | None:
    """``Dec 28 19:56`` (bjobs' time, the host's local time, no year) -> epoch, in the past year."""
    text = text.strip().rstrip(" LEX").strip()  # a trailing L/E/X marks an estimate on end times
    current = time.localtime(now)
    for year in (current.tm_year, current.tm_year - 1):
        try:
            stamp = time.mktime(time.strptime(f"{year} {text}", "%Y %b %d %H:%M"))
        except ValueError:
            return None
        if stamp <= now + 60:
            return stamp
    return None


def parse_bjobs_json(text: str) -> list[dict[str, str]]:
    """The ``RECORDS`` of ``bjobs -json`` output (LSF 10.1: every value a string)."""
    if not text.strip():
        return []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchedulerError(
            f"bjobs printed JSON that glidein cannot read ({exc.msg} at line {exc.lineno}).",
            hint="Check `bjobs -a -json -o 'jobid stat job_name'` by hand; the next cycle tries again.",
        ) from None
    records = doc.get("RECORDS") if isinstance(doc, dict) else None
    if not isinstance(records, list):
        return []
    return [{str(k): str(v) for k, v in r.items()} for r in records if isinstance(r, dict)]


def record_state(record: dict[str, str], native: PilotState) -> tuple[PilotState, str]:
    """The state of one bjobs record, refined by its exit reason."""
    stat, reason = record.get("STAT", ""), record.get("EXIT_REASON", "")
    if stat == "EXIT":
        if reason.startswith(TIMEOUT_REASONS):
            return PilotState.TIMEOUT, reason
        if reason.startswith(CANCEL_REASONS):
            return PilotState.CANCELLED, reason
        code = record.get("EXIT_CODE", "")
        return PilotState.FAILED, reason or (f"exit code {code}" if code else "")
    if native in (PilotState.QUEUED, PilotState.HELD, PilotState.SUSPENDED):
        return native, record.get("PEND_REASON", "").strip().rstrip(";")
    return native, ""


class LsfScheduler(BatchScheduler):
    """Submits pilots with ``bsub``; lists them with one ``bjobs``; cancels them with ``bkill``."""

    name = "lsf"
    label = "LSF"
    article = "an"
    submit_tool = "bsub"
    cancel_tool = "bkill"
    status_tool = "bjobs"
    directive_prefix = "#BSUB"
    script_name = SCRIPT
    job_id = _JOB_ID
    native_states = NATIVE_STATES
    refusals = REFUSALS
    transient = _TRANSIENT
    gone = _GONE
    unreachable = "could not reach LSF"

    def render(self, launch: PilotLaunch) -> str:
        site = launch.site
        if site.batch.qos:
            raise ConfigError(
                f"Site config {site.path}: `batch.qos` is set, but LSF has no QOS.",
                hint="Remove `batch.qos`; choose a queue with `batch.partition`.",
                field="batch.qos",
            )
        workdir = launch.workdir.rstrip("/") or "/"
        values = {
            "job_name": self.word(launch.tag, "the pilot's name"),
            "workdir": self.word(workdir, "the pilot's work directory"),
            "output": self.word(posixpath.join(workdir, STDOUT), "the pilot's work directory"),
            "error": self.word(posixpath.join(workdir, STDERR), "the pilot's work directory"),
            "run_limit": format_run_limit(site.shape.walltime_s),
            "directive_lines": "\n".join(f"#BSUB {d}" for d in self._directives()),
            "config": site.path.replace("\n", " "),
            "env_setup_lines": "\n".join(site.batch.env_setup),
            "pilot_command_lines": shlex.join(launch.pilot_argv),
        }
        return render_template("lsf.sh", values, quote=False)

    def submit_argv(self, launch: PilotLaunch, path: str) -> list[str]:
        return ["bsub"]

    def submit_stdin(self, launch: PilotLaunch, script: str) -> bytes | None:
        return script.encode()

    def parse_job_id(self, stdout: str) -> str | None:
        return parse_job_id(stdout)

    async def status(self) -> list[PilotJob]:
        argv = ["bjobs", "-a", "-json", "-o", BJOBS_FIELDS, "-J", f"glidein-{self.site.name}-*"]
        result = await self._run(argv)
        # No pilot of this site: "Job <name> is not found" on stderr, exit 255.
        if result.returncode != 0 and not re.search(r"is not found|No (unfinished )?job found", result.stderr):
            result.check(
                "Listing this site's pilots with bjobs",
                hint="Check that LSF answers on this host (`bjobs`); the next cycle tries again.",
            )
        now = time.time()
        jobs = []
        for record in parse_bjobs_json(result.stdout):
            pilot_id = pilot_id_from_tag(self.site.name, record.get("JOB_NAME", ""))
            if pilot_id is None or not _JOB_ID.match(record.get("JOBID", "")):
                continue
            native = record.get("STAT", "")
            state, reason = record_state(record, self._states.map(native))
            jobs.append(
                PilotJob(
                    batch_id=record["JOBID"],
                    pilot_id=pilot_id,
                    state=state,
                    native_state=native,
                    submitted_at=parse_submit_time(record.get("SUBMIT_TIME", ""), now),
                    reason=reason,
                )
            )
        return jobs

    def cancel_done(self, line: str) -> bool:
        return line.endswith("is being terminated")

    def refusal_values(self) -> dict[str, object]:
        return {**super().refusal_values(), "walltime": format_run_limit(self.site.shape.walltime_s)}

    def _directives(self) -> list[str]:
        site = self.site
        shape, batch = site.shape, site.batch
        out = [f"-n {shape.cpus}", '-R "span[hosts=1]"']
        if site.whole_node:
            out.append("-x")
        else:
            out += [f'-R "rusage[mem={shape.memory_mb}MB]"', f"-M {shape.memory_mb}MB"]
        if shape.gpus:
            out.append(f'-gpu "num={shape.gpus}"')
        if site.signal_grace_s:
            # The job warning action: SIGTERM this many minutes (rounded up) before the run limit.
            out += ["-wa TERM", f"-wt {format_run_limit(site.signal_grace_s)}"]
        if batch.partition:
            out.append(f"-q {self.word(batch.partition, 'batch.partition', config=True)}")
        if batch.account:
            out.append(f"-P {self.word(batch.account, 'batch.account', config=True)}")
        if batch.constraint:
            out.append(f"-R {self.word(f'select[{batch.constraint}]', 'batch.constraint', config=True)}")
        return out + self.extra_directives()
