"""Wire models shared by server, client, pilot and CLI: the single source of truth.

The server imports these from ``glidein_client`` so that sites install only the client.
Structs are validated by msgspec on decode (types, bounds, unknown fields); the
cross-field rules msgspec cannot express live in :func:`check_job`.
"""

from __future__ import annotations

import enum
import posixpath
import re
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta, Struct

from glidein_client.wire.errors import ValidationError

Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
MAX_INT = 2**63 - 1  # what the databases store in an integer column
PosInt = Annotated[int, Meta(ge=1, le=MAX_INT)]
NonNegInt = Annotated[int, Meta(ge=0, le=MAX_INT)]

MAX_JOBS_PER_REQUEST = 10_000
LOG_TAIL_BYTES = 64 * 1024


class JobState(str, enum.Enum):
    IDLE = "idle"
    CLAIMED = "claimed"  # held by a pilot, not started yet
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class Outcome(str, enum.Enum):
    """How one attempt ended, as the pilot (or the lease reaper) reports it."""

    DONE = "done"  # exit code 0 and every output uploaded
    FAILED = "failed"  # the job's own fault: non-zero exit, missing output
    WALLTIME = "walltime"  # killed for exceeding its walltime
    MEMORY = "memory"  # killed for exceeding its memory
    INTERRUPTED = "interrupted"  # pilot ended, SIGTERM, released claim: not the job's fault
    LOST = "lost"  # lease expired without a report: not the job's fault
    CANCELLED = "cancelled"

    @property
    def counts_as_retry(self) -> bool:
        return self in (Outcome.FAILED, Outcome.WALLTIME, Outcome.MEMORY)


class Role(str, enum.Enum):
    OPERATOR = "operator"
    USER = "user"
    SITE = "site"
    PILOT = "pilot"


class Scope(str, enum.Enum):
    """What a token may do, within what its role may do: read (GET), write (the rest), admin (operators)."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


#: The scopes of a token minted without an explicit list.
ROLE_SCOPES: dict[Role, tuple[Scope, ...]] = {
    Role.OPERATOR: (Scope.READ, Scope.WRITE, Scope.ADMIN),
    Role.USER: (Scope.READ, Scope.WRITE),
    Role.SITE: (Scope.READ, Scope.WRITE),
    Role.PILOT: (Scope.READ, Scope.WRITE),
}


class _Strict(Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


class InputFile(_Strict, kw_only=True):
    """An input placed into the job's sandbox under ``name``.

    Either uploaded to the server beforehand (``sha256`` and ``size``) or fetched from ``url``.
    """

    name: str
    sha256: Sha256 | None = None
    size: NonNegInt | None = None
    url: str | None = None


class JobSpec(_Strict, kw_only=True):
    argv: list[str] | None = None
    script: str | None = None
    env: dict[str, str] = {}
    cpus: Annotated[int, Meta(ge=1, le=4096)] = 1
    memory_mb: Annotated[int, Meta(ge=1)] = 1024
    gpus: Annotated[int, Meta(ge=0, le=64)] = 0
    disk_mb: NonNegInt = 100
    walltime_s: Annotated[int, Meta(ge=1, le=30 * 86400)] = 3600
    inputs: list[InputFile] = []
    outputs: list[str] = []
    labels: dict[str, str] = {}
    sites: list[Name] | None = None
    priority: int = 0
    max_retries: Annotated[int, Meta(ge=0, le=100)] = 2


class JobSubmit(_Strict, kw_only=True):
    jobs: Annotated[list[JobSpec], Meta(min_length=1, max_length=MAX_JOBS_PER_REQUEST)]


class JobIds(_Strict, kw_only=True):
    ids: list[int]


class OutputFile(_Strict, kw_only=True):
    name: str
    sha256: Sha256
    size: NonNegInt


class AttemptView(_Strict, kw_only=True):
    id: int
    pilot_id: int
    site: str
    outcome: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    claimed_at: float
    started_at: float | None = None
    finished_at: float | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""


class JobView(_Strict, kw_only=True):
    id: int
    owner: str
    state: JobState
    spec: JobSpec
    retries_used: int = 0
    attempts: int = 0
    submitted_at: float
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    site: str | None = None
    outputs: list[OutputFile] = []
    note: str | None = None


class JobList(_Strict, kw_only=True):
    jobs: list[JobView]
    counts: dict[str, int] = {}


class Resources(_Strict, kw_only=True):
    cpus: NonNegInt
    memory_mb: NonNegInt
    gpus: NonNegInt = 0
    disk_mb: NonNegInt = 0


class PilotShape(_Strict, kw_only=True):
    """What one pilot of a site offers; clients report it with each demand request."""

    cpus: PosInt
    memory_mb: PosInt
    gpus: NonNegInt = 0
    disk_mb: NonNegInt = 0
    walltime_s: PosInt


class Demand(_Strict, kw_only=True):
    site: str
    jobs: float  # idle jobs this site should run (a job eligible at k sites counts 1/k)
    cpus: float
    memory_mb: float
    gpus: float
    pilots: int  # pilots of the reported shape needed, net of free capacity of live pilots
    unfit_jobs: int = 0  # idle jobs eligible here that do not fit this site's pilot shape
    start_failures: int = 0  # pilots in a row that ended without ever starting work
    backoff_s: float = 0.0  # seconds before this site should submit again (0: no back-off)


class SiteWait(_Strict, kw_only=True):
    """A site client's long poll: answered when new work may change the demand, or at the timeout."""

    timeout_s: Annotated[float, Meta(ge=0, le=300)] = 30.0
    since: int | None = None  # the generation last seen: answer at once if anything happened since


class SiteWaitResult(_Strict, kw_only=True):
    changed: bool
    generation: int


class PilotGrantRequest(_Strict, kw_only=True):
    """Optional body of a pilot grant: the pilot token lives for the queue wait plus the walltime."""

    walltime_s: PosInt | None = None  # default: the walltime of the site's reported pilot shape
    max_queued_s: NonNegInt | None = None  # how long the pilot may wait in the batch queue (0: no limit)


class PilotGrant(_Strict, kw_only=True):
    pilot_id: int
    token: str
    expires_at: float | None = None  # the pilot's token is renewed by its heartbeats once it runs


class PilotStates(_Strict, kw_only=True):
    """Batch-system view of a site's pilots, sent by its client: pilot id -> state."""

    states: dict[str, str]


class PilotRegister(_Strict, kw_only=True):
    batch_id: str = ""
    host: str = ""
    resources: Resources
    end_time: float
    selftest_ok: bool = True
    selftest_reason: str | None = None


class PilotRegistered(_Strict, kw_only=True):
    pilot_id: int
    heartbeat_s: float
    lease_s: float


class ClaimedJob(_Strict, kw_only=True):
    attempt_id: int
    job_id: int
    lease: str
    spec: JobSpec


class AttemptRef(_Strict, kw_only=True):
    attempt_id: int
    lease: str


class Finish(_Strict, kw_only=True):
    attempt_id: int
    lease: str
    outcome: Outcome
    exit_code: int | None = None
    reason: str | None = None
    wall_s: float = 0.0
    max_rss_mb: float = 0.0
    stdout_tail: str = ""
    stderr_tail: str = ""
    outputs: list[OutputFile] = []


class SyncRequest(_Strict, kw_only=True):
    """One round trip of a pilot: reports, heartbeat and claim together."""

    started: list[AttemptRef] = []
    finished: list[Finish] = []
    free: Resources
    lifetime_s: float
    want: NonNegInt = 0  # extra jobs beyond what fits now, to keep a short local backlog
    wait_s: Annotated[float, Meta(ge=0, le=60)] = 0.0  # long-poll: hold the claim until work arrives
    occupancy: float = 0.0
    draining: bool = False
    # Every attempt the pilot still holds (running, waiting in its backlog, or in a report not yet
    # answered). The server requeues the pilot's other claims: their answer was lost on the way.
    held: list[int] | None = None
    # False: reports only, sent while the pilot's claiming sync waits for work; claims nothing.
    claim: bool = True


class Refusal(_Strict, kw_only=True):
    attempt_id: int
    reason: str


class SyncResponse(_Strict, kw_only=True):
    jobs: list[ClaimedJob] = []
    cancel: list[int] = []
    refused: list[Refusal] = []


class PilotExit(_Strict, kw_only=True):
    reason: str
    occupancy: float = 0.0
    jobs_run: int = 0


class SiteView(_Strict, kw_only=True):
    name: str
    shape: PilotShape | None = None
    pilots_running: int = 0
    pilots_pending: int = 0
    last_seen: float | None = None
    start_failures: int = 0
    backoff_s: float = 0.0


class Summary(_Strict, kw_only=True):
    jobs: dict[str, int]
    pilots: dict[str, int]
    sites: list[SiteView]
    occupancy: float | None = None  # allocated core-seconds / available core-seconds of ended pilots
    problems: list[str] = []  # pilots of the last day that found their node broken (black hole, self-test)


class NewSubject(_Strict, kw_only=True):
    """An operator adds a user or a site: a first token is minted for it."""

    name: Name
    expires_in_s: PosInt | None = None  # default: the token never expires (revoke it to end it)


class TokenRequest(_Strict, kw_only=True):
    role: Role
    subject: Name
    scopes: Annotated[list[Scope], Meta(min_length=1)] | None = None  # default: every scope of the role
    expires_in_s: PosInt | None = None


class TokenGrant(_Strict, kw_only=True):
    """A new token: shown once, stored by the server only as a hash."""

    id: str
    token: str
    role: Role
    subject: str
    scopes: list[Scope]
    expires_at: float | None = None


class TokenInfo(_Strict, kw_only=True):
    id: str
    role: Role
    subject: str
    scopes: list[Scope]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None


class TokenList(_Strict, kw_only=True):
    tokens: list[TokenInfo]


class Revoked(_Strict, kw_only=True):
    revoked: int  # how many tokens were revoked by this request


class ErrorBody(_Strict, kw_only=True):
    error: str
    hint: str | None = None
    field: str | None = None


# --- decoding with plain-language errors -------------------------------------------------

T = TypeVar("T")
_PATH_RE = re.compile(r"\$\.?")


def decode(data: bytes | str, type_: type[T], *, what: str = "request") -> T:
    """Decode JSON into ``type_``; a mismatch becomes a :class:`ValidationError` naming the field."""
    try:
        return msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as exc:
        raise _plain(exc, what) from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"The {what} is not valid JSON ({exc}).", hint="Send a JSON object.") from None


def convert(obj: Any, type_: type[T], *, what: str = "input") -> T:
    """Like :func:`decode` but from Python objects (e.g. parsed TOML)."""
    try:
        return msgspec.convert(obj, type=type_, strict=True)
    except msgspec.ValidationError as exc:
        raise _plain(exc, what) from None


def _plain(exc: msgspec.ValidationError, what: str) -> ValidationError:
    text = str(exc)
    field = None
    if " - at `" in text:
        text, _, path = text.partition(" - at `")
        field = _PATH_RE.sub("", path.rstrip("`"), count=1) or None
    text = text.replace("Object contains unknown field", "unknown field")
    where = f" at `{field}`" if field else ""
    return ValidationError(
        f"The {what} is invalid{where}: {text}.",
        hint="Fix that value and send it again; nothing from this request was accepted.",
        field=field,
    )


def encode(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


# --- cross-field rules ---------------------------------------------------------------------


def check_relative_path(name: str, *, field: str) -> str:
    """A sandbox-relative path: no absolute paths, no ``..``, no empty parts."""
    if not name or "\x00" in name:
        raise ValidationError(f"{field}: the file name is empty.", hint="Give a relative path.", field=field)
    norm = posixpath.normpath(name)
    if name.startswith("/") or norm.startswith("..") or "/../" in f"/{name}/" or norm in (".", ""):
        raise ValidationError(
            f"{field}: {name!r} points outside the job's sandbox.",
            hint="Use a relative path inside the job's directory, without '..' and not starting with '/'.",
            field=field,
        )
    return norm


def check_job(spec: JobSpec, index: int | None = None) -> JobSpec:
    """Rules beyond types and bounds. Raises :class:`ValidationError` naming the field."""
    at = f"jobs[{index}]." if index is not None else ""
    if bool(spec.argv) == bool(spec.script):
        raise ValidationError(
            f"{at}argv/script: a job needs exactly one of a command (argv) or a script.",
            hint="Give the command after '--' on the command line, or a script file.",
            field=f"{at}argv",
        )
    seen: set[str] = set()
    for i, inp in enumerate(spec.inputs):
        f = f"{at}inputs[{i}]"
        name = check_relative_path(inp.name, field=f"{f}.name")
        if (inp.url is None) == (inp.sha256 is None):
            raise ValidationError(
                f"{f}: an input needs either an uploaded file (sha256) or a url, not both or neither.",
                hint="Let `glidein submit -i FILE` upload it, or give an http(s) URL.",
                field=f,
            )
        if inp.url is not None and not inp.url.startswith(("http://", "https://")):
            raise ValidationError(f"{f}.url: only http(s) URLs are supported.", field=f"{f}.url")
        if name in seen:
            raise ValidationError(f"{f}.name: {name!r} is given twice.", field=f"{f}.name")
        seen.add(name)
    for i, out in enumerate(spec.outputs):
        check_relative_path(out, field=f"{at}outputs[{i}]")
    for key in spec.env:
        if not key or "=" in key or "\x00" in key:
            raise ValidationError(f"{at}env: {key!r} is not a valid variable name.", field=f"{at}env")
    return spec


# --- firewalled sites: out-of-job staging ----------------------------------------------------


class Network(str, enum.Enum):
    """How a site's pilots reach the server (the site config's ``site.network``)."""

    DIRECT = "direct"  # pilots talk to the server; files travel inside the job
    RELAY = "relay"  # through the site client's relay on the login node; files staged outside the job
    NONE = "none"  # through a mailbox on the shared filesystem; files staged outside the job

    @property
    def stages(self) -> bool:
        return self is not Network.DIRECT


class SiteNetwork(_Strict, kw_only=True):
    """A site client declares how its pilots reach the server; staging sites claim only staged jobs."""

    network: Network = Network.DIRECT


class StagingJob(_Strict, kw_only=True):
    job_id: int
    state: JobState
    site: str | None = None  # where the job was last claimed
    cpus: PosInt = 1
    inputs: list[InputFile] = []


class StagingView(_Strict, kw_only=True):
    """What a staging site's client works from."""

    staged: list[StagingJob] = []  # jobs reported staged at this site, in whatever state they are now
    eligible: list[StagingJob] = []  # idle jobs this site could run that are not staged here, in claim order


class StagingReport(_Strict, kw_only=True):
    staged: list[int] = []  # jobs whose inputs are now verified in the site's staging area
    released: list[int] = []  # jobs whose staged inputs are gone (or being staged again)


class StagingResult(_Strict, kw_only=True):
    staged: int
    released: int


class StagedOutput(_Strict, kw_only=True):
    """A pilot asks its site client to upload an output it wrote into the staging area."""

    attempt_id: int
    lease: str
    name: str
    sha256: Sha256
    size: NonNegInt
