"""The Scheduler seam: render a pilot script, submit, status (batched), cancel.

Backends are small classes. Native batch states map through explicit tables to
:class:`PilotState`; walltime expiry is TIMEOUT, not FAILED.
"""

from __future__ import annotations

import enum
import logging
import posixpath
import re
import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import ClassVar, Protocol, runtime_checkable

from glidein_client.site.config import SiteConfig
from glidein_client.site.runners.local import CommandResult, Runner
from glidein_client.wire.errors import ConfigError, SchedulerError, TemplateError

log = logging.getLogger(__name__)


class PilotState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    HELD = "held"
    SUSPENDED = "suspended"  # started, then stopped by the batch system or an admin; keeps its place
    DONE = "done"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def active(self) -> bool:
        return self in (
            PilotState.QUEUED,
            PilotState.RUNNING,
            PilotState.HELD,
            PilotState.SUSPENDED,
            PilotState.UNKNOWN,
        )


@dataclass(frozen=True)
class PilotLaunch:
    """Everything a backend needs to start one pilot."""

    pilot_id: int
    site: SiteConfig
    workdir: str  # per-pilot directory on the site's filesystem (holds the token file)
    token_file: str
    pilot_argv: tuple[str, ...]  # the glidein-pilot command line, already complete

    @property
    def tag(self) -> str:
        """Name the pilot carries in the batch queue, so a restarted client finds its own pilots."""
        return f"glidein-{self.site.name}-{self.pilot_id}"


@dataclass(frozen=True)
class PilotJob:
    batch_id: str
    pilot_id: int
    state: PilotState
    native_state: str = ""
    submitted_at: float | None = None
    reason: str = ""


#: HoldReasonCode values that mean "ran out of its allowed time" (HTCondor: JobDurationExceeded, JobExecuteExceeded).
WALLTIME_HOLD_CODES = frozenset({46, 47})


@dataclass(frozen=True)
class HoldInfo:
    """Why the batch system holds a pilot (HTCondor: ``HoldReasonCode``, ``HoldReasonSubCode``, ``HoldReason``)."""

    code: int | None
    subcode: int | None
    reason: str
    num_holds: int | None = None  # how often this pilot has been held so far
    since: float | None = None  # when it entered the held state (epoch seconds)

    @property
    def walltime(self) -> bool:
        """The hold ends a pilot that ran out of its walltime."""
        return self.code in WALLTIME_HOLD_CODES

    def __str__(self) -> str:
        return f"held (HoldReasonCode {self.code}, HoldReasonSubCode {self.subcode}): {self.reason}"


class Scheduler(Protocol):
    name: str

    def render(self, launch: PilotLaunch) -> str:
        """The batch script for one pilot."""
        ...

    async def submit(self, launch: PilotLaunch) -> str:
        """Submit one pilot; return its batch id."""
        ...

    async def status(self) -> list[PilotJob]:
        """All of this site's pilots that the batch system still knows, in one call."""
        ...

    async def cancel(self, batch_ids: list[str]) -> None: ...


@runtime_checkable
class HoldHandler(Protocol):
    """A backend whose held pilots can be inspected and released (HTCondor)."""

    def hold_reason(self, batch_id: str) -> HoldInfo | None:
        """Why a pilot is held, as of the last ``status()``; None when it is not held."""
        ...

    async def release(self, batch_ids: list[str]) -> None: ...


def pilot_id_from_tag(site: str, name: str) -> int | None:
    prefix = f"glidein-{site}-"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        return int(name[len(prefix) :])
    return None


@dataclass
class StateTable:
    """Explicit native-state -> PilotState table; an unknown native state is logged once."""

    scheduler: str
    table: dict[str, PilotState]
    _seen_unknown: set[str] = field(default_factory=set)

    def map(self, native: str) -> PilotState:
        state = self.table.get(native.strip().upper())
        if state is None:
            if native not in self._seen_unknown:
                self._seen_unknown.add(native)
                log.warning(
                    "%s reported a state glidein does not know: %r (treated as unknown)", self.scheduler, native
                )
            return PilotState.UNKNOWN
        return state


def warning_timer(site: SiteConfig, kill_after_s: int) -> tuple[int, int]:
    """``(seconds, kill_after_s)`` for ``timeout --signal=TERM --kill-after=K SECONDS`` in a pilot's script
    where the batch system sends no warning of its own: with ``pilot.signal_grace`` the pilot gets its
    SIGTERM that long before the walltime and its KILL ``kill_after_s`` after the walltime."""
    grace = site.signal_grace_s
    return site.shape.walltime_s - grace, kill_after_s + grace


def render_template(
    name: str, values: dict[str, str], *, quote: bool = True, package: str = "glidein_client.site.schedulers"
) -> str:
    """Render ``templates/<name>`` of ``package`` strictly: a missing key is a named :class:`TemplateError`.

    Values are shell-quoted unless ``quote`` is false; keys ending in ``_lines`` are
    inserted verbatim (site-admin-provided directives and set-up lines).
    """
    text = resources.files(package).joinpath("templates", name).read_text()
    tmpl = string.Template(text)
    safe = {k: (v if (not quote or k.endswith("_lines")) else shlex.quote(v)) for k, v in values.items()}
    try:
        return tmpl.substitute(safe)
    except KeyError as exc:
        raise TemplateError(
            f"The template {name} needs the value {exc.args[0]!r}, which was not supplied.",
            hint="This is a bug in the backend or an edited template; restore the shipped template.",
        ) from None
    except ValueError as exc:
        raise TemplateError(f"The template {name} is malformed: {exc}.") from None


# --- the batch-system base: what every queue-based backend shares ----------------------------

_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def directive_word(value: str) -> str:
    """Quote ``value`` for a batch directive line (``#SBATCH``, ``#PBS``, ``#BSUB``).

    These lines are read by the batch tool's own parser, not a shell: a safe word stays
    bare, anything else goes in double quotes with ``\\`` and ``"`` escaped. A line break
    cannot be quoted and raises ValueError.
    """
    if "\n" in value or "\r" in value:
        raise ValueError("line break")
    if _SAFE_WORD.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


@dataclass(frozen=True)
class Refusal:
    """One kind of submit refusal: what the tool says, and which config key to change.

    ``what`` is ``str.format()``ted with :meth:`BatchScheduler.refusal_values`; ``also``
    names further keys (or the site's admin) after the main one.
    """

    pattern: re.Pattern[str]
    what: str
    key: str
    also: str = ""


class BatchScheduler:
    """A batch system driven by commands, in the style of dask-jobqueue's ``JobQueueCluster``.

    A backend declares as data: :attr:`submit_tool`, :attr:`cancel_tool`, :attr:`status_tool`
    (for hints), :attr:`directive_prefix`, :attr:`job_id` (the pattern of a valid id),
    :attr:`native_states`, :attr:`refusals`, :attr:`transient` (a server that did not
    answer), :attr:`gone` (cancel answers meaning "nothing left to do"). It writes
    :meth:`render`, :meth:`submit_argv`, :meth:`parse_job_id` and :meth:`status`. This
    class owns the rest once: writing the files and submitting, classifying a refusal into
    a message that names the config key, cancelling in chunks, and quoting words.
    """

    name: ClassVar[str]
    label: ClassVar[str]  # the batch system's name in messages: "Slurm", "PBS", ...
    article: ClassVar[str] = "a"  # before the label: "a Slurm job id", "an LSF job id"
    submit_tool: ClassVar[str]
    cancel_tool: ClassVar[str]
    status_tool: ClassVar[str]
    directive_prefix: ClassVar[str]
    script_name: ClassVar[str]
    job_id: ClassVar[re.Pattern[str]]
    native_states: ClassVar[Mapping[str, PilotState]]
    refusals: ClassVar[tuple[Refusal, ...]] = ()
    transient: ClassVar[re.Pattern[str]]
    gone: ClassVar[re.Pattern[str]]
    unreachable: ClassVar[str] = "could not reach the batch system"
    cancel_chunk: ClassVar[int] = 100
    silent_failure_is_gone: ClassVar[bool] = False  # a cancel that fails without a word: jobs gone
    command_timeout_s: ClassVar[float] = 60.0

    def __init__(self, site: SiteConfig, runner: Runner, *, env: Mapping[str, str] | None = None) -> None:
        self.site = site
        self.runner = runner
        self.env: dict[str, str] | None = dict(env) if env else None
        self._states = StateTable(self.name, dict(self.native_states))

    # --- what a backend writes --------------------------------------------------------------

    def render(self, launch: PilotLaunch) -> str:
        raise NotImplementedError

    def submit_argv(self, launch: PilotLaunch, path: str) -> list[str]:
        """The submit command for the script written at ``path``."""
        raise NotImplementedError

    def parse_job_id(self, stdout: str) -> str | None:
        raise NotImplementedError

    async def status(self) -> list[PilotJob]:
        raise NotImplementedError

    async def prepare(self) -> None:
        """Anything to learn before the first submit (PBS: its flavour)."""

    def files(self, launch: PilotLaunch) -> list[tuple[str, str, int]]:
        """(name, text, mode) of the files written into the pilot's directory; the last is submitted."""
        return [(self.script_name, self.render(launch), 0o700)]

    def submit_stdin(self, launch: PilotLaunch, script: str) -> bytes | None:
        """What the submit command reads on stdin (LSF's ``bsub < script``); None for nothing."""
        return None

    def refusal_values(self) -> dict[str, object]:
        """The site's values that refusal messages name."""
        batch, shape = self.site.batch, self.site.shape
        return {
            "partition": batch.partition or "(default)",
            "account": batch.account or "(default)",
            "qos": batch.qos or "(default)",
            "constraint": batch.constraint or "",
            "constraint_text": f" with constraint {batch.constraint!r}" if batch.constraint else "",
            "walltime": f"{shape.walltime_s} s",
            "memory_mb": shape.memory_mb,
            "cpus": shape.cpus,
            "gpus": shape.gpus,
        }

    def choose_refusal(self, text: str) -> tuple[Refusal, re.Match[str]] | None:
        """The first refusal of :attr:`refusals` whose pattern is in ``text`` (the tool's answer)."""
        for refusal in self.refusals:
            match = refusal.pattern.search(text)
            if match is not None:
                return refusal, match
        return None

    def detail(self, result: CommandResult) -> str:
        """The most telling line of a complaint, without the tool's own prefix."""
        lines = [ln.strip() for ln in (result.stderr.strip() or result.stdout.strip()).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()] or lines
        if not errors:
            return f"exit code {result.returncode}"
        return re.sub(rf"^{re.escape(self.submit_tool)}:\s*(error:\s*)?", "", errors[-1])

    def cancel_done(self, line: str) -> bool:
        """A line of the cancel tool's answer that reports success, not trouble."""
        return False

    def warning_hint(self, line: str) -> str:
        """What to add to a warning the submit tool printed on an accepted pilot ("" for nothing)."""
        return ""

    # --- what the base owns -----------------------------------------------------------------

    async def submit(self, launch: PilotLaunch) -> str:
        await self.prepare()
        files = self.files(launch)
        await self.runner.makedirs(launch.workdir, mode=0o700)
        for name, text, mode in files:
            await self.runner.write_file(posixpath.join(launch.workdir, name), text.encode(), mode=mode)
        path = posixpath.join(launch.workdir, files[-1][0])
        argv_path = path if not path.startswith("-") else f"./{path}"  # never read as an option
        stdin = self.submit_stdin(launch, files[-1][1])
        result = await self.runner.run(
            self.submit_argv(launch, argv_path), stdin=stdin, env=self.env, timeout_s=self.command_timeout_s
        )
        if result.returncode != 0:
            raise self.submit_error(result)
        batch_id = self.parse_job_id(result.stdout)
        if batch_id is None:
            raise SchedulerError(
                f"{self.submit_tool} accepted the pilot {launch.tag} but printed no job id: {result.stdout.strip()!r}.",
                hint=f"Check that `{self.submit_tool}` on this host is {self.label}'s.",
                command=list(result.argv),
                exit_code=result.returncode,
                stderr=result.stderr,
            )
        for line in result.stderr.splitlines():
            if line.strip():
                log.warning("%s (pilot %s): %s%s", self.submit_tool, launch.tag, line.strip(), self.warning_hint(line))
        log.info("submitted pilot %s as %s job %s", launch.tag, self.label, batch_id)
        return batch_id

    def submit_error(self, result: CommandResult) -> SchedulerError:
        """A plain message for a refusal, naming the config key to change (or the site's admin)."""
        fields: dict[str, object] = {
            "command": list(result.argv),
            "exit_code": result.returncode,
            "stderr": result.stderr,
        }
        if result.stdout.strip():
            fields["stdout"] = result.stdout
        detail = self.detail(result)
        text = f"{result.stderr}\n{result.stdout}"
        tool = self.submit_tool
        if self.transient.search(text):
            return SchedulerError(
                f"{tool} {self.unreachable}: {detail.rstrip('.')}.",
                hint=f"The next cycle tries again; if this persists, check {self.label} on this host "
                f"(`{self.status_tool}`).",
                **fields,
            )
        chosen = self.choose_refusal(text)
        if chosen is not None:
            refusal, match = chosen
            named = {k: v for k, v in match.groupdict().items() if v is not None}
            what = refusal.what.format(**{**self.refusal_values(), **named})
            return SchedulerError(
                f"{tool} refused the pilot: {what} — check `{refusal.key}`{refusal.also} in {self.site.path}.",
                hint=f"({tool} said: {detail})",
                field=refusal.key,
                **fields,
            )
        return SchedulerError(
            f"{tool} refused the pilot: {detail.rstrip('.')}.",
            hint=f"Check the [pilot] and [batch] sections of {self.site.path}.",
            **fields,
        )

    async def cancel(self, batch_ids: list[str]) -> None:
        await self.act(self.cancel_tool, "cancel", batch_ids)
        if batch_ids:
            log.info("cancelled %d %s job(s): %s", len(batch_ids), self.label, " ".join(batch_ids))

    async def act(self, tool: str, verb: str, batch_ids: list[str]) -> str:
        """Run ``tool`` on ``batch_ids`` in chunks; answers meaning "gone already" are not errors.

        Returns everything the tool printed (stdout and stderr of every chunk).
        """
        answer = ""
        if not batch_ids:
            return answer
        bad = [b for b in batch_ids if not self.job_id.match(b)]
        if bad:
            raise SchedulerError(
                f"Cannot {verb} {', '.join(map(repr, bad))}: not {self.article} {self.label} job id.",
                hint="This is a bug in the caller: pass ids that submit() or status() returned.",
            )
        for start in range(0, len(batch_ids), self.cancel_chunk):
            result = await self._run([tool, *batch_ids[start : start + self.cancel_chunk]])
            answer += f"{result.stdout}\n{result.stderr}\n"
            lines = [ln.strip() for ln in f"{result.stderr}\n{result.stdout}".splitlines() if ln.strip()]
            serious = [ln for ln in lines if not self.gone.search(ln) and not self.cancel_done(ln)]
            if result.returncode != 0 and (serious or not (lines or self.silent_failure_is_gone)):
                raise SchedulerError(
                    f"{tool} could not {verb} every pilot: "
                    f"{serious[-1] if serious else f'exit code {result.returncode}'}",
                    hint=f"The next cycle tries again; check the jobs with `{self.status_tool}`.",
                    command=list(result.argv),
                    exit_code=result.returncode,
                    stderr=result.stderr,
                )
            if serious:
                log.warning("%s: %s", tool, "; ".join(serious))
            elif lines and result.returncode != 0:
                log.debug("%s: nothing to do for some jobs: %s", tool, "; ".join(lines))
        return answer

    def word(self, value: str, what: str, *, config: bool = False) -> str:
        """``value`` quoted for a directive line; a line break is a config error or a scratch-dir error."""
        try:
            return directive_word(value)
        except ValueError:
            if config:
                raise self.config_error(what, "the value has a line break") from None
            raise SchedulerError(
                f"Cannot write a {self.label} script: {what} {value!r} has a line break.",
                hint=f"Choose a `site.scratch_dir` without line breaks in {self.site.path}.",
            ) from None

    def extra_directives(self) -> list[str]:
        """``batch.extra_directives``, one per entry, without a leading directive prefix."""
        out = []
        for line in self.site.batch.extra_directives:
            line = line.strip()
            if "\n" in line or "\r" in line:
                raise self.config_error("batch.extra_directives", "an entry has a line break")
            if line.startswith(self.directive_prefix):
                line = line[len(self.directive_prefix) :].strip()
            if line:
                out.append(line)
        return out

    def config_error(self, key: str, problem: str, hint: str = "") -> ConfigError:
        return ConfigError(
            f"Site config {self.site.path}: `{key}`: {problem}.",
            hint=hint or "Write one directive per list entry, without line breaks.",
            field=key,
        )

    async def _run(self, argv: list[str]) -> CommandResult:
        return await self.runner.run(argv, env=self.env, timeout_s=self.command_timeout_s)
