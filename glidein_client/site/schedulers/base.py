"""The Scheduler seam: render a pilot script, submit, status (batched), cancel.

Backends are small classes. Native batch states map through explicit tables to
:class:`PilotState`; walltime expiry is TIMEOUT, not FAILED.
"""

from __future__ import annotations

import enum
import logging
import shlex
import string
from dataclasses import dataclass, field
from importlib import resources
from typing import Protocol, runtime_checkable

from glidein_client.site.config import SiteConfig
from glidein_client.wire.errors import TemplateError

log = logging.getLogger(__name__)


class PilotState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    HELD = "held"
    DONE = "done"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @property
    def active(self) -> bool:
        return self in (PilotState.QUEUED, PilotState.RUNNING, PilotState.HELD, PilotState.UNKNOWN)


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
