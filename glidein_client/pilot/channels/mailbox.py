"""The pilot's end of the shared-filesystem mailbox (``network = "none"``): requests and answers as files.

The pilot writes each call as a request file into its own box and waits for the answer file
that the site client writes after forwarding the call to the server (the protocol is in
:mod:`glidein_client.sharedfs.mailbox`). It looks for the answer often at first and then every
``poll_max_s``, so a quick answer is seen at once and a long poll costs little.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import msgspec

from glidein_client.sharedfs.mailbox import (
    ForeignMessage,
    MailRequest,
    MailResponse,
    new_id,
    read_message,
    request_path,
    response_path,
    ring,
    write_message,
)
from glidein_client.sharedfs.private import private_dir
from glidein_client.wire.api import _error_from
from glidein_client.wire.codec import decode, encode
from glidein_client.wire.errors import ServerUnreachable
from glidein_client.wire.schema import OutputFile, PilotExit, PilotRegister, PilotRegistered, SyncRequest, SyncResponse
from glidein_client.wire.staging import StagedOutput

log = logging.getLogger(__name__)
T = TypeVar("T")
#: How long a call waits for the site client's answer (a sync waits its long poll on top).
ANSWER_TIMEOUT_S = 120.0
CHECK_TIMEOUT_S = 30.0
QUICK_POLL_S = 0.001  # look for the answer this often at first ...
QUICK_FOR_S = 0.05  # ... for this long, then less and less often, down to poll_max_s


class MailboxTransport:
    """Pilot API calls as files in ``box``. Use as ``async with MailboxTransport(box) as transport``."""

    def __init__(self, box: Path, *, poll_max_s: float = 0.05, timeout_s: float = ANSWER_TIMEOUT_S) -> None:
        self.box = box
        self.poll_max_s = poll_max_s
        self.timeout_s = timeout_s
        self._seq = 0

    async def __aenter__(self) -> MailboxTransport:
        # The client made the box (0700); one another user made, or may write to, is refused.
        await asyncio.to_thread(private_dir, self.box.parent, "mailbox directory", parents=True)
        await asyncio.to_thread(private_dir, self.box, "pilot mailbox")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(OSError):  # when empty; the site client sweeps what is left
            await asyncio.to_thread(self.box.rmdir)

    # --- Transport ------------------------------------------------------------------------------

    async def check(self) -> None:
        await self._call("health", b"null", CHECK_TIMEOUT_S)

    async def register(self, req: PilotRegister) -> PilotRegistered:
        return decode(await self._call("register", encode(req)), PilotRegistered, what="server answer")

    async def sync(self, req: SyncRequest) -> SyncResponse:
        raw = await self._call("sync", encode(req), self.timeout_s + req.wait_s)
        return decode(raw, SyncResponse, what="server answer")

    async def exit(self, req: PilotExit) -> None:
        await self._call("exit", encode(req))

    async def upload_staged(self, out: StagedOutput) -> OutputFile:
        return decode(await self._call("upload", encode(out)), OutputFile, what="site client answer")

    # --- files ----------------------------------------------------------------------------------

    async def _call(self, op: str, body: bytes, timeout_s: float | None = None) -> bytes:
        self._seq += 1
        msg_id = new_id(self._seq)
        req_path, resp_path = request_path(self.box, msg_id), response_path(self.box, msg_id)
        request = MailRequest(id=msg_id, op=op, body=msgspec.Raw(body), sent_at=time.time())
        try:
            await asyncio.to_thread(write_message, req_path, request)
            await asyncio.to_thread(ring, self.box, msg_id)
        except OSError as exc:
            raise ServerUnreachable(
                f"Cannot write to the mailbox {self.box}: {exc.strerror or exc}.",
                hint="Check that the mailbox directory is on the shared filesystem.",
            ) from None
        started = time.monotonic()
        deadline = started + (timeout_s or self.timeout_s)
        delay = QUICK_POLL_S
        try:
            while True:
                try:
                    answer = await asyncio.to_thread(read_message, resp_path, MailResponse)
                    break
                except FileNotFoundError:
                    pass
                except ForeignMessage as exc:  # planted by another user: never acted upon
                    log.error("%s %s", exc.message, exc.hint)
                    await asyncio.to_thread(_remove, resp_path)
                if time.monotonic() >= deadline:
                    raise ServerUnreachable(
                        f"The site client did not answer through the mailbox {self.box} in "
                        f"{timeout_s or self.timeout_s:.0f} s.",
                        hint="Check that `glidein-client run` is running on the login node and that the mailbox "
                        "directory is shared with this node.",
                    )
                await asyncio.sleep(delay)
                if time.monotonic() - started > QUICK_FOR_S:
                    delay = min(delay * 1.5, self.poll_max_s)
        finally:
            await asyncio.to_thread(_remove, req_path, resp_path)
        if answer.status >= 400:
            raise _error_from(answer.status, bytes(answer.body), "the site client (mailbox)")
        return bytes(answer.body)


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
