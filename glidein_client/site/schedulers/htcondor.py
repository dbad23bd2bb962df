"""The HTCondor backend: pilots are vanilla-universe jobs submitted with ``condor_submit``.

- ``render`` fills ``templates/htcondor.sub``, the submit description; ``render_wrapper``
  fills ``templates/htcondor_pilot.sh``, the executable it names (the site's set-up lines,
  then ``exec`` of the pilot). The pilot carries its tag twice: ``+GlideinTag = "<tag>"`` and
  ``batch_name`` (``JobBatchName``). ``pilot.cpus``/``memory``/``gpus``/``disk`` become
  ``request_cpus``/``request_memory`` (MB)/``request_gpus``/``request_disk`` (KB);
  ``batch.constraint`` is the ``requirements`` expression; ``batch.account`` the
  ``accounting_group``; ``batch.extra_directives`` are submit commands, written verbatim
  after glidein's own (so they win). HTCondor has no queues, partitions, QOS or whole-node
  requests: ``batch.partition``, ``batch.qos`` and ``pilot.whole_node`` are refused with a
  :class:`ConfigError`.
- Walltime: ``allowed_execute_duration`` makes HTCondor put a pilot on hold once it has run
  for ``pilot.walltime`` (``HoldReasonCode`` 47, JobExecuteExceeded; 46, JobDurationExceeded,
  counts too). ``status`` reports such a pilot as TIMEOUT, not HELD. A ``periodic_remove``
  takes it out of the queue :data:`WALLTIME_GRACE_S` seconds later; that removal is
  recognised later (``condor_history``) by its ``RemoveReason``, which names the
  ``GlideinWalltimeHeld`` expression. HTCondor 9.0 ignores ``allowed_execute_duration`` and
  9.7 to 24.0.18 may not apply it to a job without input transfer (HTCONDOR-3633), so the
  wrapper also runs the pilot under ``timeout``: exit code 124 is TIMEOUT.
- Files: with ``batch.shared_filesystem`` (the default) nothing is transferred
  (``should_transfer_files = NO``) and the pilot starts in its directory; without it the
  wrapper, token and CA travel with the job (``YES`` / ``ON_EXIT``) and the pilot runs in the
  job's scratch directory. ``IF_NEEDED`` with ``ON_EXIT_OR_EVICT`` is never written:
  condor_submit refuses that pair.
- ``submit`` writes ``<workdir>/pilot.sh`` and ``<workdir>/pilot.sub`` through the runner and
  runs ``condor_submit pilot.sub``; ``1 job(s) submitted to cluster 123.`` gives ``123.0``.
- ``status`` is one ``condor_q -json`` call (this user's jobs that carry a ``GlideinTag``,
  kept to this site's pilots by tag). Pilots that completed or were removed leave the queue
  at once, so they are simply absent from ``status``. :meth:`HTCondorScheduler.history`
  (one ``condor_history`` call, optional) tells how given absent pilots ended.
- ``cancel`` is ``condor_rm`` with the ids; ids that are gone already are not an error.
  :meth:`HTCondorScheduler.release` runs ``condor_release``. After ``status``,
  :meth:`HTCondorScheduler.hold_reason` gives the ``HoldReasonCode``, ``HoldReasonSubCode``
  and ``HoldReason`` of a held pilot (they are in ``PilotJob.reason`` too), so the client
  can choose between release and remove.

``JobStatus`` numbers map through :mod:`.htcondor_ads` (``JOB_STATUS``, ``NATIVE_STATES``).
"""

from __future__ import annotations

import logging
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from glidein_client.site.config import SiteConfig
from glidein_client.site.runners.local import CommandResult, Runner
from glidein_client.site.schedulers.base import (
    BatchScheduler,
    HoldInfo,
    PilotJob,
    PilotLaunch,
    Refusal,
    pilot_id_from_tag,
    render_template,
    warning_timer,
)
from glidein_client.site.schedulers.htcondor_ads import (
    ATTRIBUTES,
    CONSTRAINT,
    NATIVE_STATES,
    WALLTIME_GRACE_S,
    _int,
    ad_state,
    classad_string,
    hold_info,
    parse_ads,
    parse_job_id,
)
from glidein_client.wire.errors import ConfigError, SchedulerError
from glidein_client.wire.staging import Network

log = logging.getLogger(__name__)

SUBMIT_FILE = "pilot.sub"
WRAPPER = "pilot.sh"
STDOUT = "pilot.out"
STDERR = "pilot.err"
USER_LOG = "pilot.log"

#: Seconds between the wrapper's TERM at the walltime and its KILL.
KILL_AFTER_S = 60
#: Pilot options naming files in the pilot's directory; without a shared filesystem they are
#: transferred with the job and named by their base name in its scratch directory.
TRANSFERRED_OPTIONS = ("--token-file", "--ca-file")

RM_CHUNK = 100
_JOB_ID = re.compile(r"^\d+\.\d+$")
#: condor_rm / condor_release answers that mean there is nothing (more) to do.
_NOTHING_TO_DO = re.compile(
    r"Job \d+\.\d+ not found|already marked for removal|not held to be released|"
    r"Couldn't find/(remove|release) all jobs|There are no jobs in the queue",
    re.I,
)
_JOB_LINE = re.compile(r"^Job \d+\.\d+ ")
#: condor_release of a pilot the pool will not release again (dc_schedd.cpp, HTCondor 23+).
_RELEASE_LIMIT = re.compile(r"Job (\d+\.\d+) cannot be released again, has reached SYSTEM_PERIODIC_RELEASES limit")
_TRANSIENT = re.compile(
    r"Failed to connect|Can't find address|Failed to fetch ads|SECMAN|timed out|Connection refused", re.I
)


REFUSALS = (
    # The schedd's SUBMIT_REQUIREMENT_<name>: "Submit requirement <name> not met." unless the
    # admin set SUBMIT_REQUIREMENT_<name>_REASON, whose text then stands alone after
    # condor_submit's "ERROR: Failed to commit job submission into the queue." (schedd.cpp,
    # submit.cpp, HTCondor 9.0 to 24.x).
    Refusal(
        re.compile(r"Submit requirement (?P<requirement>\S+) not met", re.I),
        "the pool's submit requirement {requirement} is not met",
        "pilot.cpus",
        also=", `pilot.memory`, `pilot.gpus`, `pilot.disk`, `pilot.walltime` and `batch.extra_directives`, "
        "or ask the pool's admin what the requirement asks for",
    ),
    Refusal(
        re.compile(r"Failed to commit job submission into the queue\.\s*\n\s*ERROR: (?P<reason>[^\n]+)", re.I),
        "the schedd refused it: {reason}",
        "pilot.cpus",
        also=", `pilot.memory`, `pilot.gpus`, `pilot.disk`, `pilot.walltime` and `batch.extra_directives`, "
        "or ask the pool's admin about this rule",
    ),
    Refusal(
        re.compile(r"should_transfer_files|when_to_transfer_output|transfer_input_files", re.I),
        "its file-transfer settings are not valid",
        "batch.extra_directives",
        also=" (and `batch.shared_filesystem`)",
    ),
    Refusal(re.compile(r"requirements", re.I), "the requirements {constraint!r} are not valid", "batch.constraint"),
    Refusal(re.compile(r"accounting.?group", re.I), "the accounting group {account!r} is not valid", "batch.account"),
    Refusal(
        re.compile(r"request_memory|RequestMemory", re.I), "request_memory {memory_mb} is not valid", "pilot.memory"
    ),
    Refusal(re.compile(r"request_cpus|RequestCpus", re.I), "request_cpus {cpus} is not valid", "pilot.cpus"),
    Refusal(re.compile(r"request_gpus|RequestGpus", re.I), "request_gpus {gpus} is not valid", "pilot.gpus"),
    Refusal(re.compile(r"request_disk|RequestDisk", re.I), "request_disk is not valid", "pilot.disk"),
    Refusal(
        re.compile(r"on Line \d+|Parse error|Unknown command|Illegal|invalid", re.I),
        "a submit command is not valid",
        "batch.extra_directives",
    ),
)


#: condor_submit's first ERROR line when the schedd refused: the reason is on the next one.
_COMMIT_FAILED = "Failed to commit job submission into the queue"


def _detail(result: CommandResult) -> str:
    lines = [ln.strip() for ln in f"{result.stderr}\n{result.stdout}".splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.upper().startswith("ERROR") or "error" in ln.lower()] or lines
    telling = [ln for ln in errors if _COMMIT_FAILED not in ln] or errors
    return telling[0] if telling else f"exit code {result.returncode}"


class HTCondorScheduler(BatchScheduler):
    """Submits pilots with ``condor_submit``; lists them with one ``condor_q``; removes them with ``condor_rm``.

    ``env`` is added to the environment of every command (e.g. ``CONDOR_CONFIG``).
    """

    name = "htcondor"
    label = "HTCondor"
    article = "an"
    submit_tool = "condor_submit"
    cancel_tool = "condor_rm"
    status_tool = "condor_q"
    directive_prefix = ""
    script_name = SUBMIT_FILE
    job_id = _JOB_ID
    native_states = NATIVE_STATES
    refusals = REFUSALS
    transient = _TRANSIENT
    gone = _NOTHING_TO_DO
    unreachable = "could not reach the schedd"
    cancel_chunk = RM_CHUNK

    def __init__(self, site: SiteConfig, runner: Runner, *, env: Mapping[str, str] | None = None) -> None:
        super().__init__(site, runner, env=env)
        self._holds: dict[str, HoldInfo] = {}
        self._check_config()

    # --- Scheduler protocol ------------------------------------------------------------------

    def render(self, launch: PilotLaunch) -> str:
        """The submit description for one pilot."""
        site = launch.site
        workdir = launch.workdir.rstrip("/") or "/"
        shape = site.shape
        values = {
            "tag": self._value(launch.tag, "the pilot's name"),
            "tag_literal": classad_string(launch.tag),
            "config": site.path.replace("\n", " "),
            "executable": self._value(posixpath.join(workdir, WRAPPER), "the pilot's work directory"),
            "workdir": self._value(workdir, "the pilot's work directory"),
            "output": self._value(posixpath.join(workdir, STDOUT), "the pilot's work directory"),
            "error": self._value(posixpath.join(workdir, STDERR), "the pilot's work directory"),
            "log": self._value(posixpath.join(workdir, USER_LOG), "the pilot's work directory"),
            "cpus": str(shape.cpus),
            "memory_mb": str(shape.memory_mb),
            "disk_kb": str(max(1, shape.disk_mb) * 1024),
            "gpus": str(shape.gpus),
            "walltime_s": str(shape.walltime_s),
            "walltime_grace_s": str(WALLTIME_GRACE_S),
            "transfer_lines": "\n".join(self._transfer_lines(launch)),
            "directive_lines": "\n".join(self._directives(site)),
        }
        return render_template("htcondor.sub", values, quote=False)

    def _transfer_lines(self, launch: PilotLaunch) -> list[str]:
        """File transfer: none on a shared filesystem; else the wrapper, token and CA travel with the job.

        condor_submit refuses ``should_transfer_files = IF_NEEDED`` together with
        ``when_to_transfer_output = ON_EXIT_OR_EVICT`` (submit_utils.cpp SetTransferFiles,
        HTCondor 9.0 to 24.x), so neither is used.
        """
        if self.site.batch.shared_filesystem:
            return [
                "# The execute nodes share this filesystem (batch.shared_filesystem): nothing is transferred.",
                "should_transfer_files    = NO",
            ]
        files = [self._value(value, "the pilot's work directory") for value in self._transferred(launch).values()]
        return [
            "# The execute nodes do not share this filesystem (batch.shared_filesystem = false): the",
            "# wrapper (the executable), the pilot's token and CA travel with the job.",
            "should_transfer_files    = YES",
            "when_to_transfer_output  = ON_EXIT",
            f"transfer_input_files     = {','.join(files)}",
        ]

    def _transferred(self, launch: PilotLaunch) -> dict[str, str]:
        """Option -> file (in the pilot's directory) for the files that travel with the job."""
        argv = launch.pilot_argv
        return {flag: argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag in TRANSFERRED_OPTIONS}

    def _pilot_argv(self, launch: PilotLaunch) -> list[str]:
        """The pilot's command line as it runs on the execute node."""
        argv = list(launch.pilot_argv)
        if self.site.batch.shared_filesystem:
            return argv
        for i, word in enumerate(argv[:-1]):
            if word in TRANSFERRED_OPTIONS:
                argv[i + 1] = posixpath.basename(argv[i + 1])  # transferred into the job's scratch directory
            elif word == "--scratch":
                argv[i + 1] = "pilots"  # under the job's scratch directory
        return argv

    def render_wrapper(self, launch: PilotLaunch) -> str:
        """The executable the submit description names: set-up lines, then the pilot."""
        site = launch.site
        workdir = shlex.quote(launch.workdir.rstrip("/") or "/")
        shared = site.batch.shared_filesystem
        values = {
            "tag": launch.tag,
            "config": site.path.replace("\n", " "),
            "env_setup_lines": "\n".join(site.batch.env_setup),
            "cd_line": f"cd {workdir} || exit 97" if shared else 'cd "$_CONDOR_SCRATCH_DIR" || exit 97',
            "walltime_s": str(warning_timer(site, KILL_AFTER_S)[0]),
            "kill_after_s": str(warning_timer(site, KILL_AFTER_S)[1]),
            "pilot_command_lines": shlex.join(self._pilot_argv(launch)),
        }
        return render_template("htcondor_pilot.sh", values, quote=False)

    def files(self, launch: PilotLaunch) -> list[tuple[str, str, int]]:
        return [(WRAPPER, self.render_wrapper(launch), 0o700), (SUBMIT_FILE, self.render(launch), 0o600)]

    def submit_argv(self, launch: PilotLaunch, path: str) -> list[str]:
        return ["condor_submit", path]

    def parse_job_id(self, stdout: str) -> str | None:
        return parse_job_id(stdout)

    async def status(self) -> list[PilotJob]:
        result = await self._run(["condor_q", "-json", "-attributes", ATTRIBUTES, "-constraint", CONSTRAINT])
        result.check(
            "Listing this site's pilots with condor_q",
            hint="Check that the schedd answers on this host (`condor_q`); the next cycle tries again.",
        )
        jobs = self._jobs(parse_ads(result.stdout))
        self._holds = {job.batch_id: info for job, info in jobs if info is not None}
        return [job for job, _ in jobs]

    async def cancel(self, batch_ids: list[str]) -> None:
        await self.act("condor_rm", "cancel", batch_ids)
        log.info("removed %d HTCondor job(s): %s", len(batch_ids), " ".join(batch_ids))

    # --- HTCondor extras ---------------------------------------------------------------------

    async def release(self, batch_ids: list[str]) -> None:
        """Release held pilots (``condor_release``); ids that are not held or gone are skipped.

        A pilot the pool will not release again (``SYSTEM_PERIODIC_RELEASES``) is removed.
        """
        answer = await self.act("condor_release", "release", batch_ids)
        spent = [m[1] for m in _RELEASE_LIMIT.finditer(answer)]
        if spent:
            log.warning("HTCondor will not release pilot(s) %s again (SYSTEM_PERIODIC_RELEASES): removing them", spent)
            await self.cancel(spent)
        log.info("released %d HTCondor job(s): %s", len(batch_ids) - len(spent), " ".join(batch_ids))

    def hold_reason(self, batch_id: str) -> HoldInfo | None:
        """Why a pilot was held, as of the last :meth:`status`; None when it was not held."""
        return self._holds.get(batch_id)

    async def history(self, batch_ids: Sequence[str]) -> list[PilotJob]:
        """How pilots that left the queue ended, from one ``condor_history`` call.

        ``condor_history`` reads the schedd's history file newest first and stops after
        ``len(batch_ids)`` matches; pilots it no longer has are absent from the answer.
        """
        ids = [b for b in batch_ids if _JOB_ID.match(b)]
        if not ids:
            return []
        wanted = " || ".join(f"(ClusterId == {c} && ProcId == {p})" for c, p in (b.split(".") for b in ids))
        result = await self._run(
            [
                "condor_history",
                "-json",
                "-attributes",
                ATTRIBUTES,
                "-constraint",
                f"{CONSTRAINT} && ({wanted})",
                "-limit",
                str(len(ids)),
            ]
        )
        result.check(
            "Reading how pilots ended with condor_history",
            hint="Check that `condor_history` works on this host; the next cycle tries again.",
        )
        return [job for job, _ in self._jobs(parse_ads(result.stdout))]

    # --- helpers -------------------------------------------------------------------------------

    def _jobs(self, ads: list[dict[str, Any]]) -> list[tuple[PilotJob, HoldInfo | None]]:
        out: list[tuple[PilotJob, HoldInfo | None]] = []
        for ad in ads:
            tag = ad.get("GlideinTag", ad.get("JobBatchName"))
            pilot_id = pilot_id_from_tag(self.site.name, tag) if isinstance(tag, str) else None
            cluster, proc = _int(ad.get("ClusterId")), _int(ad.get("ProcId"))
            if pilot_id is None or cluster is None or proc is None:
                continue
            native, refined, reason = ad_state(ad)
            state = refined if refined is not None else self._states.map(native)
            qdate = _int(ad.get("QDate"))
            job = PilotJob(
                batch_id=f"{cluster}.{proc}",
                pilot_id=pilot_id,
                state=state,
                native_state=native,
                submitted_at=float(qdate) if qdate is not None else None,
                reason=reason,
            )
            out.append((job, hold_info(ad) if _int(ad.get("JobStatus")) == 5 else None))
        return out

    def cancel_done(self, line: str) -> bool:
        if _RELEASE_LIMIT.search(line):
            return True  # release() removes these
        return bool(_JOB_LINE.match(line)) and line.rstrip(".").endswith(("marked for removal", "released"))

    def detail(self, result: CommandResult) -> str:
        return _detail(result)

    def warning_hint(self, line: str) -> str:
        if "was unused by condor_submit" in line:  # submit_utils.cpp warn_unused: a key it does not know
            return f" (check `batch.extra_directives` in {self.site.path})"
        return ""

    def refusal_values(self) -> dict[str, object]:
        return {**super().refusal_values(), "account": self.site.batch.account or ""}

    def _check_config(self) -> None:
        site = self.site
        for key, value in (("batch.partition", site.batch.partition), ("batch.qos", site.batch.qos)):
            if value:
                raise ConfigError(
                    f"Site config {site.path}: `{key}` is set, but HTCondor has no queues, partitions or QOS.",
                    hint=f"Remove `{key}`; steer pilots with `batch.constraint` (a requirements expression) "
                    "or `batch.extra_directives`.",
                    field=key,
                )
        if not site.batch.shared_filesystem and site.network is not Network.DIRECT:
            raise ConfigError(
                f'Site config {site.path}: `batch.shared_filesystem = false` needs `site.network = "direct"`: '
                "the relay and mailbox modes stage files through the shared filesystem.",
                hint="Use a shared filesystem for firewalled sites, or let the pilots reach the server directly.",
                field="batch.shared_filesystem",
            )
        if site.whole_node:
            raise ConfigError(
                f"Site config {site.path}: `pilot.whole_node` is set, but HTCondor pilots ask for "
                "cpus and memory, not nodes.",
                hint="Set `pilot.whole_node = false` and size `pilot.cpus` and `pilot.memory` to a whole machine.",
                field="pilot.whole_node",
            )

    def _directives(self, site: SiteConfig) -> list[str]:
        batch = site.batch
        out: list[str] = []
        if site.signal_grace_s:
            # Removal and eviction: SIGTERM, then up to pilot.signal_grace before the kill (the
            # execute node's MachineMaxVacateTime may shorten it); the wrapper warns before the walltime.
            out += [
                "kill_sig                 = SIGTERM",
                f"job_max_vacate_time      = {site.signal_grace_s}",
                "want_graceful_removal    = true",
            ]
        if batch.account:
            out.append(f"accounting_group         = {self._config_value(batch.account, 'batch.account')}")
        if batch.constraint:
            out.append(f"requirements             = {self._config_value(batch.constraint, 'batch.constraint')}")
        for line in batch.extra_directives:
            out.append(self._config_value(line.strip(), "batch.extra_directives"))
        return [line for line in out if line]

    def _value(self, value: str, what: str) -> str:
        if "\n" in value or "\r" in value:
            raise SchedulerError(
                f"Cannot write an HTCondor submit description: {what} {value!r} has a line break.",
                hint=f"Choose a `site.scratch_dir` without line breaks in {self.site.path}.",
            )
        return value

    def _config_value(self, value: str, key: str) -> str:
        if "\n" in value or "\r" in value:
            raise self.config_error(
                key, "the value has a line break", "Write one submit command per list entry, without line breaks."
            )
        return value
