"""Wire models shared by server, client, pilot and CLI: the single source of truth.

The server imports these from ``glidein_client`` so that sites install only the client.
Structs are validated by msgspec on decode (types, bounds, unknown fields); the
cross-field rules msgspec cannot express live in :mod:`glidein_client.wire.rules`,
decoding with plain-language errors in :mod:`glidein_client.wire.codec`, and the staging
models of firewalled sites in :mod:`glidein_client.wire.staging`.
"""

from __future__ import annotations

import enum
from typing import Annotated

from msgspec import Meta, Struct

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
    HELD = "held"  # kept out of the queue by its owner or an operator until released (condor_hold)

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


class SiteMode(str, enum.Enum):
    """What the operator lets a site do (`glidein-server site drain|pause|resume`)."""

    OPEN = "open"
    DRAINING = "draining"  # no new pilots, no new claims; running jobs finish, then its pilots leave
    PAUSED = "paused"  # no new pilots, no new claims, until resumed


class Scope(str, enum.Enum):
    """What a token may do, within what its role may do: read (GET), write (the rest), admin and metrics (operators)."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"
    METRICS = "metrics"  # scrape GET /metrics, and nothing else (operators)


#: The scopes of a token minted without an explicit list.
ROLE_SCOPES: dict[Role, tuple[Scope, ...]] = {
    Role.OPERATOR: (Scope.READ, Scope.WRITE, Scope.ADMIN, Scope.METRICS),
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
    priority: Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)] = 0  # a 32-bit integer, as the stores keep it
    max_retries: Annotated[int, Meta(ge=0, le=100)] = 0  # reruns after the job's own failure (HTCondor: none)


class JobSubmit(_Strict, kw_only=True):
    jobs: Annotated[list[JobSpec], Meta(min_length=1, max_length=MAX_JOBS_PER_REQUEST)]


class JobIds(_Strict, kw_only=True):
    ids: list[int]


class OutputFile(_Strict, kw_only=True):
    name: str
    sha256: Sha256
    size: NonNegInt


class FileDigest(_Strict, kw_only=True):
    name: str
    sha256: Sha256
    size: NonNegInt | None = None


class Provenance(_Strict, kw_only=True):
    """Where and how one attempt ran, as its pilot saw it: what an analyser cites for how a file was made.

    Every field is optional so that pilots of earlier releases, which send none, still report.
    """

    host: str = ""
    batch_system: str = ""  # slurm | pbs | htcondor | local
    batch_id: str = ""
    pilot_version: str = ""
    python: str = ""
    os: str = ""
    cpu_model: str = ""
    cores: list[int] = []  # the physical cores the job was pinned to ([] = not pinned)
    gpus: list[str] = []
    inputs: list[FileDigest] = []
    started_at: float | None = None  # wall clock (epoch seconds) at the pilot
    ended_at: float | None = None
    cpu_user_s: float = 0.0  # of the job's process tree
    cpu_system_s: float = 0.0
    isolation: str = ""  # none | bwrap | apptainer: how the job was kept from its pilot and other jobs


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
    cpus: int | None = None  # cores the attempt was given
    wall_s: float | None = None
    max_rss_mb: float | None = None
    cpu_s: float | None = None  # user + system
    cpu_efficiency: float | None = None  # cpu_s / (wall_s * cpus), within [0, 1] for a well-behaved job
    outputs: list[OutputFile] = []
    provenance: Provenance | None = None


class Usage(_Strict, kw_only=True):
    """What the attempt that produced a job's result used, and where and how it ran."""

    attempt_id: int
    cpus: int
    wall_s: float | None = None
    max_rss_mb: float | None = None
    cpu_s: float | None = None
    cpu_efficiency: float | None = None
    provenance: Provenance | None = None


class JobChange(_Strict, kw_only=True):
    """One requirement a retry changed: ``field`` (cpus, memory_mb, walltime_s, gpus, sites) from ``old`` to ``new``."""

    field: str
    old: int | list[str] | None = None
    new: int | list[str] | None = None


class JobEvent(_Strict, kw_only=True):
    """One entry of a job's history: who held, released or retried it, when, why, and what changed."""

    at: float
    action: str  # held | released | retried
    by: str  # the user or operator who did it
    reason: str | None = None
    changes: list[JobChange] = []


class HoldRequest(_Strict, kw_only=True):
    """Why a job is held or released (kept in its history)."""

    reason: Annotated[str, Meta(max_length=1000)] | None = None


class RetryRequest(_Strict, kw_only=True):
    """Run a failed, cancelled or held job again, with new requirements where given (None: keep)."""

    reason: Annotated[str, Meta(max_length=1000)] | None = None
    cpus: Annotated[int, Meta(ge=1, le=4096)] | None = None
    memory_mb: Annotated[int, Meta(ge=1, le=MAX_INT)] | None = None
    gpus: Annotated[int, Meta(ge=0, le=64)] | None = None
    walltime_s: Annotated[int, Meta(ge=1, le=30 * 86400)] | None = None
    sites: list[Name] | None = None  # the sites the job may run at from now on ([] = any site)


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
    usage: Usage | None = None  # of the attempt whose result the job kept (done or failed jobs)
    history: list[JobEvent] = []  # holds, releases and retries by request, oldest first
    # The user's own request of each requirement a retry grew (the spec holds the grown one),
    # e.g. {"memory_mb": 100} for a job retried with more memory after it ran out.
    asked: dict[str, int] = {}


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
    mode: SiteMode = SiteMode.OPEN  # set by the operator; not open: no pilots are demanded
    max_cpus: int | None = None  # the operator's cap on the cores the site's jobs hold at once


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
    failure: str | None = None  # why the site's last pilot that failed at start failed, from its output


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
    attempt_id: PosInt
    lease: str


class Finish(_Strict, kw_only=True):
    attempt_id: PosInt
    lease: str
    outcome: Outcome
    exit_code: int | None = None
    reason: str | None = None
    wall_s: float = 0.0
    max_rss_mb: float = 0.0
    stdout_tail: str = ""
    stderr_tail: str = ""
    outputs: list[OutputFile] = []
    provenance: Provenance | None = None  # absent from pilots of earlier releases


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
    held: list[PosInt] | None = None
    # This pilot's count of the syncs it sent, 1, 2, 3...: a claim answered to sync N counts as lost
    # only when a sync numbered above N omits it from ``held`` (the pilot sends ``held`` only once
    # every earlier sync has come back or been given up). A stale sync that arrives late, after a
    # newer one's claim, cannot requeue what the newer one claimed. Absent (earlier pilots): any
    # claim that ``held`` omits counts as lost.
    seq: PosInt | None = None
    # False: reports only, sent while the pilot's claiming sync waits for work; claims nothing.
    claim: bool = True


class Refusal(_Strict, kw_only=True):
    attempt_id: int
    reason: str


class SyncResponse(_Strict, kw_only=True):
    jobs: list[ClaimedJob] = []
    cancel: list[int] = []
    refused: list[Refusal] = []
    leave: str | None = None  # why the pilot should leave once it holds no job (its site is draining)


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
    mode: SiteMode = SiteMode.OPEN
    max_cpus: int | None = None
    cpus_in_use: int = 0  # cores its running and claimed jobs hold
    pilot_failure: str | None = None  # why its last pilot that failed at start failed, when known


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
    another: bool = False  # mint a token for one that already has an active token (else 409)


class SiteModeRequest(_Strict, kw_only=True):
    """An operator drains, pauses or reopens a site."""

    mode: SiteMode


class SiteCapRequest(_Strict, kw_only=True):
    """An operator caps the cores a site's jobs hold at once (null: no cap)."""

    max_cpus: PosInt | None = None


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
