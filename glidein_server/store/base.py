"""The Store seam: durable state of jobs, attempts, pilots, sites, files and tokens.

`Store` is the union of four small protocols (tokens, jobs, pilots and sites, staging) that a
backend implements; the HTTP layer may depend on just the part it uses. Decisions (demand,
matchmaking, the job lifecycle) live in glidein_server.policy; a store applies their plans.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from glidein_client.wire.schema import (
    ROLE_SCOPES,
    AttemptView,
    Demand,
    JobSpec,
    JobView,
    OutputFile,
    PilotRegister,
    PilotShape,
    RetryRequest,
    Role,
    Scope,
    SiteMode,
    Summary,
    SyncRequest,
    SyncResponse,
    TokenInfo,
)
from glidein_client.wire.staging import Network, StagingView
from glidein_server.store.monitoring import MonitoringStore


@dataclass(frozen=True)
class Principal:
    role: Role
    subject: str  # user name, site name, pilot id or "operator"
    token_id: str = ""  # public id of the token (a prefix of its hash), for logs and revocation
    scopes: frozenset[Scope] = frozenset(Scope)
    expires_at: float | None = None


def stored_scopes(role: Role, text: str) -> frozenset[Scope]:
    """A token's stored scopes ('' = every scope of its role), never beyond what the role may do."""
    allowed = frozenset(ROLE_SCOPES[role])
    return allowed if not text else allowed & {Scope(s) for s in text.split() if s in Scope._value2member_map_}


@dataclass(frozen=True)
class JobFilter:
    owner: str | None = None
    state: str | None = None
    label: tuple[str, str] | None = None
    ids: tuple[int, ...] | None = None
    limit: int = 1000
    offset: int = 0
    labels: tuple[tuple[str, str], ...] = ()  # more labels the jobs must all carry (AND, with ``label``)
    #: Keyset paging: only jobs past this id in the page's order (the last id of the previous page),
    #: so that the next page costs what the first does, however deep the listing is.
    after: int | None = None
    newest_first: bool = False  # the page in descending id order (``after`` then means older)
    counts: bool = True  # False: no counts per state (a later page of a listing already has them)

    @property
    def all_labels(self) -> tuple[tuple[str, str], ...]:
        return ((self.label,) if self.label is not None else ()) + self.labels


@dataclass(frozen=True)
class JobAct:
    """Who holds, releases or retries a job, when, and why (kept in the job's history)."""

    by: str
    at: float
    reason: str | None = None


@dataclass(frozen=True)
class PilotInfo:
    id: int
    site: str
    state: str
    cpus: int
    memory_mb: int
    gpus: int
    disk_mb: int


class TokenStore(Protocol):
    """API tokens (hashes only) and operators' TOTP secrets."""

    async def add_token(
        self, token_hash: str, role: Role, subject: str, expires_at: float | None, scopes: Sequence[Scope] | None = None
    ) -> str:
        """Store a token's sha256 (never the token); returns its public id. No scopes: all of the role's."""
        ...

    async def lookup_token(self, token_hash: str, now: float) -> Principal | None:
        """The principal a token stands for (expired ones too: the caller decides); None if unknown or revoked."""
        ...

    async def list_tokens(
        self, role: Role | None, subject: str | None, *, revoked: bool = False, limit: int = 1000
    ) -> list[TokenInfo]:
        """Tokens, newest first, filtered by role and subject; revoked ones only when asked."""
        ...

    async def revoke_token(self, token_id: str, now: float) -> list[str]:
        """Revoke one token by public id; returns the ids revoked (empty if none was live)."""
        ...

    async def revoke_subject(self, role: Role, subject: str, now: float) -> list[str]:
        """Revoke every live token of a subject (a site's pilots' too); returns their ids."""
        ...

    async def renew_token(self, token_id: str, expires_at: float) -> None:
        """Move a live, expiring token's end later (never earlier)."""
        ...

    async def purge_tokens(self, before: float) -> int:
        """Delete tokens expired or revoked before ``before``; returns how many."""
        ...

    async def set_totp(self, subject: str, secret: bytes, now: float) -> None:
        """Store (or replace) the encrypted TOTP secret of an operator."""
        ...

    async def get_totp(self, subject: str) -> bytes | None:
        """The encrypted TOTP secret of an operator, or None if not enrolled."""
        ...

    async def use_totp_step(self, subject: str, step: int) -> bool:
        """Record that the code of time step ``step`` was used; False if it (or a newer one) already was."""
        ...


class JobStore(Protocol):
    """Jobs as users see them, their attempts, outputs and who may read which file."""

    async def add_jobs(self, owner: str, specs: Sequence[JobSpec], now: float) -> list[int]:
        """Queue jobs as idle, in one transaction; returns their ids in order."""
        ...

    async def list_jobs(self, flt: JobFilter) -> tuple[list[JobView], dict[str, int]]:
        """One page of jobs matching ``flt`` (by id, ascending unless ``newest_first``; past ``after`` when
        set, then ``offset`` skipped) and the count per state of all that match (state, ``after`` and
        ``offset`` aside; empty when ``flt.counts`` is False)."""
        ...

    async def get_job(self, job_id: int) -> JobView | None:
        """One job, or None."""
        ...

    async def cancel_job(self, job_id: int, now: float) -> JobView:
        """Cancel a job unless it is final; its pilot hears at its next sync. NotFoundError if unknown."""
        ...

    async def retry_job(self, job_id: int, act: JobAct | None = None, req: RetryRequest | None = None) -> JobView:
        """Queue a failed, cancelled or held job again with fresh retries, and with the new requirements of
        ``req`` where it sets them; recorded in the job's history when ``act`` says who. ConflictError otherwise."""
        ...

    async def hold_job(self, job_id: int, act: JobAct) -> JobView:
        """Take an idle or running job out of the queue until released (its pilot hears, as of a cancel);
        a held job stays as it is; ConflictError for a finished job."""
        ...

    async def release_job(self, job_id: int, act: JobAct) -> JobView:
        """Put a held job back in the queue; ConflictError for a job not held."""
        ...

    async def attempts_of(self, job_id: int) -> list[AttemptView]:
        """Every attempt of a job, oldest first."""
        ...

    async def job_output(self, job_id: int, name: str) -> OutputFile | None:
        """An output of the job's result attempt, or None."""
        ...

    async def add_file_owner(self, sha256: str, owner: str, size: int) -> None:
        """Record that ``owner`` uploaded the file with this content."""
        ...

    async def may_read_file(self, sha256: str, principal: Principal) -> bool:
        """Whether the principal may download the file: its uploader or owner of a job that produced it,
        a pilot running a job that reads it, a site that may run such a job, or an operator."""
        ...

    async def summary(self, owner: str | None) -> Summary:
        """Counts of jobs (of ``owner``, or all) and pilots per state, sites, occupancy and recent problems."""
        ...


class PilotStore(Protocol):
    """Sites, their demand, pilots and the attempts they run (the claim and heartbeat path)."""

    async def report_site(self, site: str, shape: PilotShape, now: float) -> None:
        """Record the shape of the pilots a site submits (what its demand is computed for)."""
        ...

    async def site_demand(self, site: str, now: float, live_after: float) -> Demand:
        """What the site should run: idle work it could run, net of the free capacity of its pilots
        seen after ``live_after``; with its start failures and back-off."""
        ...

    async def set_site_mode(self, site: str, mode: SiteMode) -> None:
        """The operator drains, pauses or resumes (opens) a site."""
        ...

    async def set_site_cap(self, site: str, max_cpus: int | None) -> None:
        """The operator caps the cores the site's jobs hold at once (None: no cap)."""
        ...

    async def site_shapes(self) -> dict[str, PilotShape]:
        """The pilot shape each site last reported."""
        ...

    async def new_pilot(self, site: str, now: float) -> int:
        """A pending pilot of the site; returns its id."""
        ...

    async def pilot_states(self, site: str, states: dict[int, str], now: float, failure: str | None = None) -> int:
        """Apply the batch system's view of the site's pilots; those it reports ended release their
        jobs at once. Returns how many ended."""
        ...

    async def register_pilot(self, pilot_id: int, req: PilotRegister, now: float) -> None:
        """A pilot starts: its resources and self-test; a failed self-test ends it and counts against its site."""
        ...

    async def sync(self, pilot_id: int, req: SyncRequest, now: float, lease_s: float) -> SyncResponse:
        """One pilot round trip, in one transaction: starts, finishes, heartbeat, and a claim of jobs
        that fit what it has free. ConflictError if the pilot is not running."""
        ...

    async def claim_more(
        self, pilot_id: int, want: int, now: float, lease_s: float, *, seq: int | None = None
    ) -> SyncResponse:
        """Claim for a waiting long poll from what the pilot reported last; ``seq`` is the number of
        the waiting sync, whose answer carries these claims."""
        ...

    async def record_output(
        self, pilot_id: int, attempt_id: int, lease: str, name: str, sha256: str, size: int
    ) -> None:
        """Record an uploaded output of a live attempt; ConflictError on a stale lease, ValidationError
        for an undeclared name."""
        ...

    async def pilot_exit(self, pilot_id: int, reason: str, occupancy: float, jobs_run: int, now: float) -> None:
        """A pilot says it is leaving; its jobs still held are requeued."""
        ...

    async def expire(self, now: float, pilot_timeout_s: float) -> int:
        """Requeue attempts whose lease ran out and end pilots silent for ``pilot_timeout_s``;
        returns how many attempts expired."""
        ...


class StagingStore(Protocol):
    """Firewalled sites: a site whose client stages data out of the job claims only jobs staged there."""

    async def set_site_network(self, site: str, network: Network, now: float) -> bool:
        """Record how the site's pilots reach the server; True when that changed."""
        ...

    async def staging_view(self, site: str, limit: int) -> StagingView:
        """Jobs staged at the site, and up to ``limit`` idle jobs it could stage next."""
        ...

    async def report_staging(
        self, site: str, staged: Sequence[int], released: Sequence[int], now: float
    ) -> tuple[int, int]:
        """Record jobs the site's client staged or released; returns (added, dropped)."""
        ...


@dataclass(frozen=True)
class Purged:
    """What one purge removed: finished jobs, their attempts, and the hashes of output files that
    nothing refers to any more (the caller deletes those files)."""

    jobs: int = 0
    attempts: int = 0
    orphan_files: tuple[str, ...] = ()


class RetentionStore(Protocol):
    """Finished jobs do not stay forever."""

    async def purge_finished(self, before: float, limit: int) -> Purged:
        """Delete up to ``limit`` jobs that finished (done, failed, cancelled) before ``before``, oldest
        first, with their attempts, outputs and staging records, in one transaction."""
        ...


class Store(TokenStore, JobStore, PilotStore, StagingStore, MonitoringStore, RetentionStore, Protocol):
    """The whole durable state of a server, with an explicit lifecycle (constructors do no I/O)."""

    async def open(self) -> None:
        """Connect, and create or upgrade the schema."""
        ...

    async def close(self) -> None:
        """Release connections; safe to call twice."""
        ...

    async def recover(self, now: float, grace_s: float) -> None:
        """After a restart: give pilots ``grace_s`` to reconnect before their jobs count as lost."""
        ...

    def watch(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when another server replica sharing the database made jobs claimable (a
        single-process store never does: the server wakes its own waiters)."""
        ...
