"""The Channel seam: how a pilot talks to the server.

``DirectChannel`` speaks HTTPS to the server. Sites whose worker nodes cannot reach it
use another Channel (a login-node relay, a shared-filesystem mailbox) with the same methods.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Protocol

from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import (
    InputFile,
    OutputFile,
    PilotExit,
    PilotRegister,
    PilotRegistered,
    SyncRequest,
    SyncResponse,
)


class Channel(Protocol):
    async def check(self) -> None:
        """Raise a GlideinError when the server cannot be reached."""
        ...

    async def register(self, req: PilotRegister) -> PilotRegistered: ...

    async def sync(self, req: SyncRequest) -> SyncResponse: ...

    async def fetch_input(self, inp: InputFile, dest: Path) -> None: ...

    async def upload_output(self, attempt_id: int, lease: str, name: str, path: Path) -> OutputFile: ...

    async def exit(self, req: PilotExit) -> None: ...


class DirectChannel:
    def __init__(self, url: str, token: str, *, ca_file: str | None = None) -> None:
        self._api = ApiClient(url, token, ca_file=ca_file, timeout_s=120.0)

    async def __aenter__(self) -> DirectChannel:
        await self._api.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._api.__aexit__(et, e, tb)

    async def check(self) -> None:
        await self._api.health()

    async def register(self, req: PilotRegister) -> PilotRegistered:
        return await self._api.register(req)

    async def sync(self, req: SyncRequest) -> SyncResponse:
        return await self._api.sync(req)

    async def fetch_input(self, inp: InputFile, dest: Path) -> None:
        if inp.url is not None:
            await self._api.download_url(inp.url, dest, inp.sha256)
        elif inp.sha256 is not None:
            await self._api.download(inp.sha256, dest)

    async def upload_output(self, attempt_id: int, lease: str, name: str, path: Path) -> OutputFile:
        return await self._api.upload_output(attempt_id, lease, name, path)

    async def exit(self, req: PilotExit) -> None:
        await self._api.pilot_exit(req)
