"""Forwarding pilot calls to the server for firewalled sites, each with that pilot's own token.

:class:`PilotTokens` knows the tokens this site client minted for its own pilots (and only
those): it learns each one when it submits the pilot, and after a restart it reads them back
from the pilots' token files. :class:`PilotForwarder` sends a pilot's call to the server with
that pilot's token -- never a credential of the client's own -- and only for the pilot API
routes; it also uploads outputs that pilots wrote into the staging area. The login-node
relay and the mailbox both forward through it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import aiohttp
import msgspec

from glidein_client.sharedfs.mailbox import box_name
from glidein_client.sharedfs.staging_area import StagingArea
from glidein_client.wire.api import API, ssl_context
from glidein_client.wire.errors import GlideinError
from glidein_client.wire.schema import ErrorBody
from glidein_client.wire.staging import StagedOutput

log = logging.getLogger(__name__)

#: The only calls forwarded: the pilot API (and the health check a pilot's self-test makes).
PILOT_ROUTES = frozenset(
    {("GET", "/health"), ("POST", "/pilot/register"), ("POST", "/pilot/sync"), ("POST", "/pilot/exit")}
)
RESCAN_S = 1.0


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def error_body(status: int, message: str, hint: str | None = None) -> tuple[int, bytes]:
    return status, msgspec.json.encode(ErrorBody(error=message, hint=hint))


#: The client's own copy of a pilot's token, beside the ``token`` the pilot reads and removes.
CLIENT_TOKEN = "client-token"


class PilotTokens:
    """The tokens of the pilots this client submitted, kept in memory by hash and read back from their files."""

    def __init__(self, meta_dir: str | Path, site: str) -> None:
        self.meta_dir = Path(meta_dir)
        self.site = site
        self._by_hash: dict[str, int] = {}
        self._by_pilot: dict[int, str] = {}
        self._scanned_at = 0.0

    def add(self, pilot_id: int, token: str) -> None:
        self._by_hash[token_hash(token)] = pilot_id
        self._by_pilot[pilot_id] = token

    def pilot_of(self, token: str) -> int | None:
        """The pilot that ``token`` was minted for by this client, or None. Blocking (may read token files)."""
        digest = token_hash(token)
        if digest not in self._by_hash and time.monotonic() - self._scanned_at >= RESCAN_S:
            self._scan()
        return self._by_hash.get(digest)

    def token_of(self, pilot_id: int) -> str | None:
        """The token this client minted for ``pilot_id``, or None. Blocking (may read its token file)."""
        if pilot_id not in self._by_pilot:
            self._read(pilot_id)
        return self._by_pilot.get(pilot_id)

    def _scan(self) -> None:
        self._scanned_at = time.monotonic()
        prefix = f"glidein-{self.site}-"
        try:
            dirs = [p for p in self.meta_dir.iterdir() if p.name.startswith(prefix)]
        except OSError:
            return
        for path in dirs:
            tail = path.name[len(prefix) :]
            if tail.isdigit() and int(tail) not in self._by_pilot:
                self._read(int(tail))

    def _read(self, pilot_id: int) -> None:
        try:
            token = (self.meta_dir / box_name(self.site, pilot_id) / CLIENT_TOKEN).read_text().strip()
        except OSError:
            return
        if token:
            self.add(pilot_id, token)


class PilotForwarder:
    """Sends pilots' calls to the server. Use as ``async with PilotForwarder(...) as forwarder``."""

    def __init__(
        self,
        server_url: str,
        area: StagingArea,
        *,
        ca_file: str | None = None,
        timeout_s: float = 120.0,
        on_finished: Callable[[], None] | None = None,
    ) -> None:
        self.url = server_url.rstrip("/")
        self.area = area
        self._ca_file = ca_file
        self._timeout_s = timeout_s
        self._on_finished = on_finished
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PilotForwarder:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context(self._ca_file) or True, limit=256),
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
            raise RuntimeError("PilotForwarder used outside 'async with'")
        return self._session

    async def forward(self, token: str, method: str, route: str, body: bytes | None) -> tuple[int, bytes]:
        """One pilot API call with the pilot's ``token``; returns the server's status and body."""
        if (method, route) not in PILOT_ROUTES:
            return error_body(404, f"{method} {route} is not part of the pilot API; it is not forwarded.")
        headers = {"Authorization": f"Bearer {token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        status, content = await self._send(method, f"{self.url}{API}{route}", headers, body)
        if route == "/pilot/sync" and status < 400 and body is not None and b'"finished"' in body:
            if self._on_finished is not None:
                self._on_finished()  # jobs ended: their staged files can go and others can be staged
        return status, content

    async def upload_staged(self, token: str, out: StagedOutput) -> tuple[int, bytes]:
        """Upload an output a pilot wrote into the staging area, checked first, then remove it from the area."""
        try:
            fh = await asyncio.to_thread(self.area.open_output, out.attempt_id, out.name, out.sha256, out.size)
        except GlideinError as exc:
            return error_body(400, exc.message, exc.hint)
        headers = {"Authorization": f"Bearer {token}", "X-Glidein-Lease": out.lease, "X-Glidein-Sha256": out.sha256}
        url = f"{self.url}{API}/pilot/attempts/{out.attempt_id}/outputs"
        try:  # the checked file itself is sent, streamed (aiohttp reads it off the event loop)
            status, content = await self._send("PUT", url, headers, fh, params={"name": out.name})
        finally:
            await asyncio.to_thread(fh.close)
        if status < 400:
            await asyncio.to_thread(self.area.drop_output, out.attempt_id, out.name)
            log.debug("uploaded output %s of attempt %d (%d bytes)", out.name, out.attempt_id, out.size)
        return status, content

    async def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        data: bytes | BinaryIO | None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        try:
            async with self.session.request(method, url, data=data, headers=headers, params=params) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return error_body(
                502,
                f"The site client cannot reach the glidein server at {self.url}: {exc.__class__.__name__} {exc}.",
                "The pilot retries; check the login node's connection to the server.",
            )
