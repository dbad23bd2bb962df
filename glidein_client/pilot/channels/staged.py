"""Channels of pilots on firewalled sites: messages through a relay or a mailbox, files through the staging area.

A :class:`StagedChannel` is a :class:`~glidein_client.pilot.channels.base.Channel` made of a
message :class:`Transport` (the login-node relay, or the shared-filesystem mailbox) and the
site's staging area. Inputs are copied from the area, where the site client staged and
verified them before the job could be claimed, and checked again on the way into the
sandbox. Outputs are written into the area, and the site client uploads them to the server
with this pilot's own token and the attempt's lease before the call returns.

``--channel direct | relay | mailbox`` of ``glidein-pilot`` picks one through :func:`open_channel`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from glidein_client.pilot.channels.base import Channel, DirectChannel
from glidein_client.sharedfs.staging_area import StagingArea, input_key
from glidein_client.wire.errors import ConfigError, GlideinError
from glidein_client.wire.schema import (
    InputFile,
    OutputFile,
    PilotExit,
    PilotRegister,
    PilotRegistered,
    SyncRequest,
    SyncResponse,
)
from glidein_client.wire.staging import StagedOutput

CHANNELS = ("direct", "relay", "mailbox")


class Transport(Protocol):
    """How a firewalled pilot's messages reach the server: the calls of a Channel that carry no files."""

    async def check(self) -> None: ...

    async def register(self, req: PilotRegister) -> PilotRegistered: ...

    async def sync(self, req: SyncRequest) -> SyncResponse: ...

    async def exit(self, req: PilotExit) -> None: ...

    async def upload_staged(self, out: StagedOutput) -> OutputFile:
        """Have the site client upload an output this pilot wrote into the staging area."""
        ...


class RelayTransport(DirectChannel):
    """The pilot API through the site client's relay on the login node (``network = "relay"``)."""

    async def upload_staged(self, out: StagedOutput) -> OutputFile:
        return await self._api.upload_staged_output(out)


class StagedChannel:
    """A Channel whose files go through the site's staging area and whose messages go through ``transport``."""

    def __init__(self, transport: Transport, area: StagingArea) -> None:
        self.transport = transport
        self.area = area

    async def check(self) -> None:
        if not await asyncio.to_thread(self.area.inputs.is_dir):
            raise GlideinError(
                f"The staging area {self.area.root} is not visible on this node.",
                hint="It must be on a filesystem the worker nodes share with the login node; see [staging] "
                "in the site config.",
            )
        await self.transport.check()

    async def register(self, req: PilotRegister) -> PilotRegistered:
        return await self.transport.register(req)

    async def sync(self, req: SyncRequest) -> SyncResponse:
        return await self.transport.sync(req)

    async def exit(self, req: PilotExit) -> None:
        await self.transport.exit(req)

    async def fetch_input(self, inp: InputFile, dest: Path) -> None:
        await asyncio.to_thread(self.area.copy_input, input_key(inp), inp.sha256, dest)

    async def upload_output(self, attempt_id: int, lease: str, name: str, path: Path) -> OutputFile:
        sha256, size = await asyncio.to_thread(self.area.put_output, attempt_id, name, path)
        return await self.transport.upload_staged(
            StagedOutput(attempt_id=attempt_id, lease=lease, name=name, sha256=sha256, size=size)
        )


@contextlib.asynccontextmanager
async def open_channel(
    kind: str,
    *,
    server_url: str,
    token: str,
    ca_file: str | None = None,
    staging_dir: str | None = None,
    mailbox_dir: str | None = None,
) -> AsyncIterator[Channel]:
    """The pilot's channel of ``kind`` (``direct``, ``relay`` or ``mailbox``), open for the block."""
    if kind == "direct":
        async with DirectChannel(server_url, token, ca_file=ca_file) as direct:
            yield direct
        return
    if kind not in CHANNELS:
        raise ConfigError(f"--channel {kind!r} is not known.", hint=f"Use one of {', '.join(CHANNELS)}.")
    if not staging_dir:
        raise ConfigError(
            f"--channel {kind} needs --staging-dir: the site's staging area on the shared filesystem.",
            hint="The site client puts it into the pilot's command line; check [staging] in its config.",
        )
    area = StagingArea(staging_dir)
    await asyncio.to_thread(area.check)  # another user's area could swap inputs or read outputs
    if kind == "relay":
        relay = RelayTransport(server_url, token, ca_file=ca_file)
        async with relay:
            yield StagedChannel(relay, area)
        return
    if not mailbox_dir:
        raise ConfigError(
            "--channel mailbox needs --mailbox-dir: this pilot's box on the shared filesystem.",
            hint="The site client puts it into the pilot's command line; check [mailbox] in its config.",
        )
    from glidein_client.pilot.channels.mailbox import MailboxTransport

    async with MailboxTransport(Path(mailbox_dir)) as mailbox:
        yield StagedChannel(mailbox, area)
