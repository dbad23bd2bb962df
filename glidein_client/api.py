"""Async HTTP client of the server's REST API (``/api/v1``), used by the CLI, client and pilot."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import msgspec

from .errors import (
    AuthError,
    ConflictError,
    ForbiddenError,
    GlideinError,
    NotFoundError,
    ServerUnreachable,
    ValidationError,
)
from .schema import (
    AttemptView,
    Demand,
    JobIds,
    JobList,
    JobSpec,
    JobSubmit,
    JobView,
    OutputFile,
    PilotExit,
    PilotGrant,
    PilotRegister,
    PilotRegistered,
    PilotShape,
    PilotStates,
    SiteWait,
    SiteWaitResult,
    Summary,
    SyncRequest,
    SyncResponse,
    decode,
    encode,
)

T = TypeVar("T")
API = "/api/v1"
_STATUS_ERRORS: dict[int, type[GlideinError]] = {
    400: ValidationError,
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: ValidationError,
    422: ValidationError,
}


def ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=ca_file) if ca_file else None


class ApiClient:
    """One HTTP session to the server. Use as ``async with ApiClient(url, token) as api``."""

    def __init__(self, url: str, token: str | None, *, ca_file: str | None = None,
                 timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._ca_file = ca_file
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        connector = aiohttp.TCPConnector(ssl=ssl_context(self._ca_file) or True, limit=32)
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self._timeout_s),
        )
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ApiClient used outside 'async with'")
        return self._session

    # --- transport --------------------------------------------------------------------------

    async def _request(self, method: str, path: str, *, body: Any = None, data: bytes | None = None,
                       params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                       raw: bool = False) -> bytes:
        payload = encode(body) if body is not None else data
        hdrs = dict(headers or {})
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        try:
            async with self.session.request(method, f"{self.url}{API}{path}", data=payload,
                                            params=params, headers=hdrs) as resp:
                content = await resp.read()
                if resp.status >= 400:
                    raise _error_from(resp.status, content, self.url)
                return content
        except aiohttp.ClientError as exc:
            raise ServerUnreachable(
                f"Cannot reach the glidein server at {self.url}: {exc}.",
                hint="Check the server URL and that the server is running.",
            ) from None
        except (asyncio.TimeoutError, ssl.SSLError, OSError) as exc:
            raise ServerUnreachable(
                f"Cannot reach the glidein server at {self.url}: {exc.__class__.__name__} {exc}.",
                hint="Check the server URL, the network, and the CA file if TLS is used.",
            ) from None

    async def _json(self, method: str, path: str, type_: type[T], **kw: Any) -> T:
        return decode(await self._request(method, path, **kw), type_, what="server answer")

    # --- users --------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        return await self._json("GET", "/health", dict[str, Any])

    async def submit(self, jobs: list[JobSpec]) -> list[int]:
        return (await self._json("POST", "/jobs", JobIds, body=JobSubmit(jobs=jobs))).ids

    async def list_jobs(self, *, state: str | None = None, owner: str | None = None,
                        label: str | None = None, ids: list[int] | None = None,
                        limit: int = 1000, offset: int = 0) -> JobList:
        params = {"limit": str(limit), "offset": str(offset)}
        if state:
            params["state"] = state
        if owner:
            params["owner"] = owner
        if label:
            params["label"] = label
        if ids:
            params["ids"] = ",".join(map(str, ids))
        return await self._json("GET", "/jobs", JobList, params=params)

    async def get_job(self, job_id: int) -> JobView:
        return await self._json("GET", f"/jobs/{job_id}", JobView)

    async def cancel(self, job_id: int) -> JobView:
        return await self._json("POST", f"/jobs/{job_id}/cancel", JobView)

    async def retry(self, job_id: int) -> JobView:
        return await self._json("POST", f"/jobs/{job_id}/retry", JobView)

    async def attempts(self, job_id: int) -> list[AttemptView]:
        return await self._json("GET", f"/jobs/{job_id}/attempts", list[AttemptView])

    async def fetch_output(self, job_id: int, name: str) -> bytes:
        return await self._request("GET", f"/jobs/{job_id}/outputs", params={"name": name})

    async def upload_file(self, path: Path) -> OutputFile:
        data = await asyncio.to_thread(path.read_bytes)
        digest = hashlib.sha256(data).hexdigest()
        return await self._json("PUT", f"/files/{digest}", OutputFile, data=data)

    async def summary(self) -> Summary:
        return await self._json("GET", "/summary", Summary)

    # --- site clients -------------------------------------------------------------------------

    async def demand(self, site: str, shape: PilotShape) -> Demand:
        return await self._json("POST", f"/sites/{site}/demand", Demand, body=shape)

    async def new_pilot(self, site: str) -> PilotGrant:
        return await self._json("POST", f"/sites/{site}/pilots", PilotGrant, body={})

    async def site_wait(self, site: str, timeout_s: float, since: int | None = None) -> SiteWaitResult:
        """Wait until new work may change the site's demand, or ``timeout_s`` passes."""
        return await self._json("POST", f"/sites/{site}/wait", SiteWaitResult,
                                body=SiteWait(timeout_s=timeout_s, since=since),)

    async def pilot_states(self, site: str, states: dict[str, str]) -> None:
        await self._request("POST", f"/sites/{site}/pilot-states", body=PilotStates(states=states))

    # --- pilots -------------------------------------------------------------------------------

    async def register(self, req: PilotRegister) -> PilotRegistered:
        return await self._json("POST", "/pilot/register", PilotRegistered, body=req)

    async def sync(self, req: SyncRequest) -> SyncResponse:
        return await self._json("POST", "/pilot/sync", SyncResponse, body=req)

    async def pilot_exit(self, req: PilotExit) -> None:
        await self._request("POST", "/pilot/exit", body=req)

    async def download(self, sha256: str, dest: Path) -> None:
        """Download a stored file to ``dest``, verifying its sha256."""
        await self._download(f"{API}/files/{sha256}", dest, sha256)

    async def download_url(self, url: str, dest: Path, sha256: str | None = None) -> None:
        await self._download(url, dest, sha256, absolute=True)

    async def _download(self, path: str, dest: Path, sha256: str | None, absolute: bool = False) -> None:
        url = path if absolute else f"{self.url}{path}"
        digest = hashlib.sha256()
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            async with self.session.get(url) as resp:
                if resp.status >= 400:
                    raise _error_from(resp.status, await resp.read(), self.url)
                with open(tmp, "wb") as fh:  # noqa: ASYNC230 - local disk, chunked writes
                    async for chunk in _chunks(resp):
                        digest.update(chunk)
                        fh.write(chunk)
        except aiohttp.ClientError as exc:
            raise ServerUnreachable(f"Download of {url} failed: {exc}.") from None
        if sha256 is not None and digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise ValidationError(
                f"The file downloaded from {url} does not match its sha256 checksum.",
                hint="The stored copy or the transfer is corrupt; the job will be retried.",
            )
        os.replace(tmp, dest)

    async def upload_output(self, attempt_id: int, lease: str, name: str, path: Path) -> OutputFile:
        data = await asyncio.to_thread(path.read_bytes)
        digest = hashlib.sha256(data).hexdigest()
        return await self._json(
            "PUT", f"/pilot/attempts/{attempt_id}/outputs", OutputFile, data=data,
            params={"name": name},
            headers={"X-Glidein-Lease": lease, "X-Glidein-Sha256": digest},
        )


async def _chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    async for chunk in resp.content.iter_chunked(1 << 20):
        yield chunk


def _error_from(status: int, content: bytes, url: str) -> GlideinError:
    try:
        body = msgspec.json.decode(content)
        message = str(body.get("error")) if isinstance(body, dict) else content.decode(errors="replace")
        hint = body.get("hint") if isinstance(body, dict) else None
    except msgspec.DecodeError:
        message, hint = content.decode(errors="replace")[:300] or f"HTTP {status}", None
    cls = _STATUS_ERRORS.get(status, ServerUnreachable)
    return cls(message, hint=hint, status=status)
