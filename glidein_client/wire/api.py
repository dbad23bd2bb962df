"""Async HTTP client of the server's REST API (``/api/v1``), used by the CLI, client and pilot."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import msgspec

from glidein_client.wire.codec import decode, encode
from glidein_client.wire.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    ForbiddenError,
    GlideinError,
    InputUnavailable,
    NotFoundError,
    RateLimited,
    ServerUnreachable,
    TlsError,
    ValidationError,
)
from glidein_client.wire.schema import (
    AttemptView,
    Demand,
    HoldRequest,
    JobIds,
    JobList,
    JobSpec,
    JobSubmit,
    JobView,
    NewSubject,
    OutputFile,
    PilotExit,
    PilotGrant,
    PilotGrantRequest,
    PilotRegister,
    PilotRegistered,
    PilotShape,
    PilotStates,
    RetryRequest,
    Revoked,
    Role,
    SiteCapRequest,
    SiteMode,
    SiteModeRequest,
    SiteView,
    SiteWait,
    SiteWaitResult,
    Summary,
    SyncRequest,
    SyncResponse,
    TokenGrant,
    TokenList,
    TokenRequest,
)
from glidein_client.wire.staging import Network, SiteNetwork, StagedOutput, StagingReport, StagingResult, StagingView

T = TypeVar("T")
log = logging.getLogger(__name__)
#: How long an input URL that fails transiently (refused, reset, 5xx) is tried before the attempt fails.
URL_GIVE_UP_S = 60.0
API = "/api/v1"
_STATUS_ERRORS: dict[int, type[GlideinError]] = {
    400: ValidationError,
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: ValidationError,
    422: ValidationError,
    429: RateLimited,
}
#: A throttled request (429) is sent again after the server's Retry-After, this many times at most.
RATE_LIMIT_RETRIES = 8
MAX_RETRY_AFTER_S = 60.0
TOTP_HEADER = "X-Glidein-TOTP"


def ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    if not ca_file:
        return None
    try:
        return ssl.create_default_context(cafile=ca_file)
    except FileNotFoundError:
        raise ConfigError(
            f"The CA file {ca_file} does not exist.",
            hint="Copy the server's CA file (its state directory's tls/ca.pem) here, or fix the path "
            "in ca_file, --ca-file or GLIDEIN_CA_FILE.",
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"The CA file {ca_file} cannot be used: {exc}.",
            hint="It must be the PEM certificate of the server's CA (tls/ca.pem).",
        ) from None


def tls_error(url: str, ca_file: str | None, exc: BaseException) -> TlsError:
    """A plain message for a server certificate this client does not trust."""
    cert_error = getattr(exc, "certificate_error", exc)
    detail = getattr(cert_error, "verify_message", None) or str(cert_error)
    if "mismatch" in detail.lower() or "hostname" in detail.lower():
        host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        return TlsError(
            f"The server at {url} has a certificate that is not valid for the host name {host!r}.",
            hint="Use the name the certificate was made for (`glidein-server init` printed them), or "
            f"add it on the server host: glidein-server tls renew --tls-name {host}",
        )
    if ca_file:
        return TlsError(
            f"The server at {url} has a certificate that the CA file {ca_file} did not sign ({detail}).",
            hint="Use the CA file of that server: its state directory's tls/ca.pem.",
        )
    return TlsError(
        f"The server at {url} has a certificate that this machine does not trust ({detail}).",
        hint="Name the server's CA file (its state directory's tls/ca.pem, printed by "
        "`glidein-server init`): ca_file in your config, GLIDEIN_CA_FILE, or --ca-file for pilots.",
    )


class ApiClient:
    """One HTTP session to the server. Use as ``async with ApiClient(url, token) as api``."""

    def __init__(self, url: str, token: str | None, *, ca_file: str | None = None, timeout_s: float = 60.0) -> None:
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

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ApiClient used outside 'async with'")
        return self._session

    # --- transport --------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: bytes | None = None,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        raw: bool = False,
    ) -> bytes:
        payload = encode(body) if body is not None else data
        hdrs = dict(headers or {})
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                async with self.session.request(
                    method, f"{self.url}{API}{path}", data=payload, params=params, headers=hdrs
                ) as resp:
                    content = await resp.read()
                    if resp.status == 429 and attempt < RATE_LIMIT_RETRIES:
                        await asyncio.sleep(_retry_after_s(resp.headers.get("Retry-After")))
                        continue
                    if resp.status >= 400:
                        raise _error_from(resp.status, content, self.url)
                    return content
            except aiohttp.ClientConnectorCertificateError as exc:
                raise tls_error(self.url, self._ca_file, exc) from None
            except aiohttp.ClientError as exc:
                hint = "Check the server URL and that the server is running."
                if self.url.startswith("http://"):
                    hint += " A server with TLS (the default) is reached with https://."
                raise ServerUnreachable(f"Cannot reach the glidein server at {self.url}: {exc}.", hint=hint) from None
            except ssl.SSLCertVerificationError as exc:
                raise tls_error(self.url, self._ca_file, exc) from None
            except (asyncio.TimeoutError, ssl.SSLError, OSError) as exc:
                raise ServerUnreachable(
                    f"Cannot reach the glidein server at {self.url}: {exc.__class__.__name__} {exc}.",
                    hint="Check the server URL, the network, and the CA file if TLS is used.",
                ) from None
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _json(self, method: str, path: str, type_: type[T], **kw: Any) -> T:
        return decode(await self._request(method, path, **kw), type_, what="server answer")

    # --- users --------------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        return await self._json("GET", "/health", dict[str, Any])

    async def submit(self, jobs: list[JobSpec]) -> list[int]:
        return (await self._json("POST", "/jobs", JobIds, body=JobSubmit(jobs=jobs))).ids

    async def list_jobs(
        self,
        *,
        state: str | None = None,
        owner: str | None = None,
        label: str | Sequence[str] | None = None,
        ids: list[int] | None = None,
        limit: int = 1000,
        offset: int = 0,
        after: int | None = None,
        newest_first: bool = False,
        counts: bool = True,
    ) -> JobList:
        """``label``: ``k=v``, or several that the jobs must all carry. ``after``: the last id of the
        previous page (keyset paging, newest first too); ``counts=False`` leaves the counts out."""
        params = [("limit", str(limit))] + [("offset", str(offset))] * bool(offset)
        params += [("after", str(after))] * (after is not None) + [("order", "desc")] * newest_first
        params += [("counts", "0")] * (not counts)
        if state:
            params.append(("state", state))
        if owner:
            params.append(("owner", owner))
        params += [("label", text) for text in ([label] if isinstance(label, str) else label or [])]
        if ids:
            params.append(("ids", ",".join(map(str, ids))))
        return await self._json("GET", "/jobs", JobList, params=params)

    async def get_job(self, job_id: int) -> JobView:
        return await self._json("GET", f"/jobs/{job_id}", JobView)

    async def cancel(self, job_id: int) -> JobView:
        return await self._json("POST", f"/jobs/{job_id}/cancel", JobView)

    async def retry(self, job_id: int, req: RetryRequest | None = None) -> JobView:
        return await self._json("POST", f"/jobs/{job_id}/retry", JobView, body=req or RetryRequest())

    async def hold(self, job_id: int, reason: str | None = None) -> JobView:
        return await self._json("POST", f"/jobs/{job_id}/hold", JobView, body=HoldRequest(reason=reason))

    async def release(self, job_id: int, reason: str | None = None) -> JobView:
        return await self._json("POST", f"/jobs/{job_id}/release", JobView, body=HoldRequest(reason=reason))

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

    async def new_pilot(
        self, site: str, *, walltime_s: int | None = None, max_queued_s: int | None = None
    ) -> PilotGrant:
        """Mint a pilot; its token lives for ``max_queued_s`` in the queue plus ``walltime_s`` of work."""
        return await self._json(
            "POST",
            f"/sites/{site}/pilots",
            PilotGrant,
            body=PilotGrantRequest(walltime_s=walltime_s, max_queued_s=max_queued_s),
        )

    async def site_wait(self, site: str, timeout_s: float, since: int | None = None) -> SiteWaitResult:
        """Wait until new work may change the site's demand, or ``timeout_s`` passes."""
        return await self._json(
            "POST",
            f"/sites/{site}/wait",
            SiteWaitResult,
            body=SiteWait(timeout_s=timeout_s, since=since),
        )

    async def pilot_states(self, site: str, states: dict[str, str], failure: str | None = None) -> None:
        body = PilotStates(states=states, failure=failure)
        await self._request("POST", f"/sites/{site}/pilot-states", body=body)

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

    async def download_url(
        self, url: str, dest: Path, sha256: str | None = None, *, give_up_s: float = URL_GIVE_UP_S
    ) -> None:
        """Fetch an input URL (without credentials). A transient failure (connection refused or reset,
        a 5xx answer) is tried again for ``give_up_s``; then, or at once for a 4xx answer or a host
        that does not resolve, :class:`InputUnavailable` names the URL and the HTTP status or DNS error."""
        deadline = time.monotonic() + give_up_s
        delay = 1.0
        while True:
            try:
                await self._download(url, dest, sha256, absolute=True)
                return
            except InputUnavailable as exc:
                if not exc.fields.get("transient") or time.monotonic() + delay > deadline:
                    raise InputUnavailable(exc.message, hint=exc.hint) from None
                log.info("%s; trying again in %.0f s", exc.message, delay)
                await asyncio.sleep(delay)
                delay = min(10.0, delay * 2)

    async def _download(
        self, path: str, dest: Path, sha256: str | None, absolute: bool = False, tries: int = RATE_LIMIT_RETRIES
    ) -> None:
        url = path if absolute else f"{self.url}{path}"
        digest = hashlib.sha256()
        tmp = dest.with_name(f".{dest.name}.part")
        # The token goes only to this server's API paths: an input URL, wherever it points (the
        # server itself included), is fetched without credentials.
        foreign = absolute
        plain = (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self._timeout_s))
            if foreign
            else None
        )
        try:
            async with (plain or self.session).get(url) as resp:
                if resp.status == 429 and tries > 0:  # throttled: wait as the server asks, then again
                    await asyncio.sleep(_retry_after_s(resp.headers.get("Retry-After")))
                    return await self._download(path, dest, sha256, absolute, tries - 1)
                if resp.status >= 400 and foreign:
                    raise InputUnavailable(
                        f"the input URL {url} answered HTTP {resp.status} {resp.reason or ''}".rstrip(),
                        transient=resp.status >= 500,
                    )
                if resp.status >= 400:
                    raise _error_from(resp.status, await resp.read(), self.url)
                with open(tmp, "wb") as fh:  # noqa: ASYNC230 - local disk, chunked writes
                    async for chunk in _chunks(resp):
                        digest.update(chunk)
                        fh.write(chunk)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise tls_error(self.url, self._ca_file, exc) from None
        except aiohttp.ClientError as exc:
            if foreign and isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, socket.gaierror):
                host = urlsplit(url).hostname
                reason = exc.os_error.strerror or str(exc.os_error)
                raise InputUnavailable(f"the host {host} of the input URL {url} does not resolve ({reason})") from None
            if foreign:
                raise InputUnavailable(f"the input URL {url} could not be fetched: {exc}", transient=True) from None
            raise ServerUnreachable(f"Download of {url} failed: {exc}.") from None
        finally:
            if plain is not None:
                await plain.close()
        if sha256 is not None and digest.hexdigest() != sha256:
            tmp.unlink(missing_ok=True)
            raise ValidationError(
                f"The file downloaded from {url} does not match its sha256 checksum.",
                hint="The stored copy or the transfer is corrupt; the job will be retried.",
            )
        os.replace(tmp, dest)

    # --- operators (each call needs a fresh one-time code) ----------------------------------

    def _totp(self, code: str) -> dict[str, str]:
        return {TOTP_HEADER: code}

    async def admin_add(
        self, role: Role, name: str, totp: str, *, expires_in_s: int | None = None, another: bool = False
    ) -> TokenGrant:
        """Add a user or a site and return its first token (``another``: a further token of one that has one)."""
        return await self._json(
            "POST",
            f"/admin/{role.value}s",
            TokenGrant,
            headers=self._totp(totp),
            body=NewSubject(name=name, expires_in_s=expires_in_s, another=another),
        )

    async def admin_site_mode(self, site: str, mode: SiteMode, totp: str) -> SiteView:
        """Drain, pause or reopen a site."""
        body = SiteModeRequest(mode=mode)
        return await self._json("POST", f"/admin/sites/{site}/mode", SiteView, body=body, headers=self._totp(totp))

    async def admin_site_cap(self, site: str, max_cpus: int | None, totp: str) -> SiteView:
        """Cap the cores a site's jobs hold at once (None: no cap)."""
        body = SiteCapRequest(max_cpus=max_cpus)
        return await self._json("POST", f"/admin/sites/{site}/cap", SiteView, body=body, headers=self._totp(totp))

    async def admin_revoke(self, role: Role, name: str, totp: str) -> int:
        """Revoke every token of a user or a site (and of the site's pilots)."""
        return (await self._json("DELETE", f"/admin/{role.value}s/{name}", Revoked, headers=self._totp(totp))).revoked

    async def admin_mint(self, req: TokenRequest, totp: str) -> TokenGrant:
        return await self._json("POST", "/admin/tokens", TokenGrant, body=req, headers=self._totp(totp))

    async def admin_tokens(
        self, totp: str, *, role: Role | None = None, subject: str | None = None, revoked: bool = False
    ) -> TokenList:
        pairs = (("role", role.value if role else ""), ("subject", subject or ""), ("revoked", "1" if revoked else ""))
        params = {k: v for k, v in pairs if v}
        return await self._json("GET", "/admin/tokens", TokenList, params=params, headers=self._totp(totp))

    async def admin_revoke_token(self, token_id: str, totp: str) -> int:
        return (await self._json("DELETE", f"/admin/tokens/{token_id}", Revoked, headers=self._totp(totp))).revoked

    async def upload_output(self, attempt_id: int, lease: str, name: str, path: Path) -> OutputFile:
        data = await asyncio.to_thread(path.read_bytes)
        digest = hashlib.sha256(data).hexdigest()
        return await self._json(
            "PUT",
            f"/pilot/attempts/{attempt_id}/outputs",
            OutputFile,
            data=data,
            params={"name": name},
            headers={"X-Glidein-Lease": lease, "X-Glidein-Sha256": digest},
        )

    # --- firewalled sites (out-of-job staging) -------------------------------------------------

    async def set_site_network(self, site: str, network: Network) -> SiteNetwork:
        return await self._json("PUT", f"/sites/{site}/network", SiteNetwork, body=SiteNetwork(network=network))

    async def staging_view(self, site: str, limit: int = 1000) -> StagingView:
        return await self._json("GET", f"/sites/{site}/staging", StagingView, params={"limit": str(limit)})

    async def report_staging(
        self, site: str, *, staged: list[int] | None = None, released: list[int] | None = None
    ) -> StagingResult:
        return await self._json(
            "POST",
            f"/sites/{site}/staging",
            StagingResult,
            body=StagingReport(staged=staged or [], released=released or []),
        )

    def site_file_url(self, site: str, sha256: str) -> str:
        return f"{self.url}{API}/sites/{site}/files/{sha256}"

    async def upload_staged_output(self, out: StagedOutput) -> OutputFile:
        """Ask a login-node relay to upload an output this pilot wrote into the site's staging area."""
        return await self._json("POST", "/pilot/staged-outputs", OutputFile, body=out)


def _retry_after_s(value: str | None) -> float:
    try:
        return min(MAX_RETRY_AFTER_S, max(0.1, float(value or 1)))
    except ValueError:
        return 1.0


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
    field = body.get("field") if isinstance(body, dict) and isinstance(body.get("field"), str) else None
    return cls(message, hint=hint, status=status, **({"field": field} if field else {}))
