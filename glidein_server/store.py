"""The Store seam: durable state of jobs, attempts, pilots, sites, files and tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from glidein_client.schema import (
    AttemptView,
    Demand,
    JobSpec,
    JobView,
    OutputFile,
    PilotRegister,
    PilotShape,
    Role,
    Summary,
    SyncRequest,
    SyncResponse,
)


@dataclass(frozen=True)
class Principal:
    role: Role
    subject: str  # user name, site name, pilot id or "operator"


@dataclass(frozen=True)
class JobFilter:
    owner: str | None = None
    state: str | None = None
    label: tuple[str, str] | None = None
    ids: tuple[int, ...] | None = None
    limit: int = 1000
    offset: int = 0


@dataclass(frozen=True)
class PilotInfo:
    id: int
    site: str
    state: str
    cpus: int
    memory_mb: int
    gpus: int
    disk_mb: int


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def add_token(self, token_hash: str, role: Role, subject: str, expires_at: float | None) -> None: ...
    async def lookup_token(self, token_hash: str, now: float) -> Principal | None: ...

    async def add_jobs(self, owner: str, specs: Sequence[JobSpec], now: float) -> list[int]: ...
    async def list_jobs(self, flt: JobFilter) -> tuple[list[JobView], dict[str, int]]: ...
    async def get_job(self, job_id: int) -> JobView | None: ...
    async def cancel_job(self, job_id: int, now: float) -> JobView: ...
    async def retry_job(self, job_id: int) -> JobView: ...
    async def attempts_of(self, job_id: int) -> list[AttemptView]: ...
    async def job_output(self, job_id: int, name: str) -> OutputFile | None: ...

    async def add_file_owner(self, sha256: str, owner: str, size: int) -> None: ...
    async def may_read_file(self, sha256: str, principal: Principal) -> bool: ...

    async def report_site(self, site: str, shape: PilotShape, now: float) -> None: ...
    async def site_demand(self, site: str, now: float, live_after: float) -> Demand: ...
    async def site_shapes(self) -> dict[str, PilotShape]: ...
    async def new_pilot(self, site: str, now: float) -> int: ...
    async def pilot_states(self, site: str, states: dict[int, str], now: float) -> int: ...

    async def register_pilot(self, pilot_id: int, req: PilotRegister, now: float) -> None: ...
    async def sync(self, pilot_id: int, req: SyncRequest, now: float, lease_s: float) -> SyncResponse: ...
    async def record_output(self, pilot_id: int, attempt_id: int, lease: str, name: str,
                            sha256: str, size: int) -> None: ...
    async def pilot_exit(self, pilot_id: int, reason: str, occupancy: float, jobs_run: int,
                         now: float) -> None: ...
    async def expire(self, now: float, pilot_timeout_s: float) -> int: ...
    async def summary(self, owner: str | None) -> Summary: ...
