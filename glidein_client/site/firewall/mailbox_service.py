"""The site client's end of the mailbox (``network = "none"``): answer pilots' request files.

Every ``mailbox.poll_s`` -- every few milliseconds for a second after traffic, so that a
pilot's next call is seen at once -- it lists the ring directory, where pilots announce new
requests, and reads the boxes that rang; every ``FULL_SCAN_S`` it reads every box. It
forwards each request to the server with the token it minted for that box's pilot, writes
the answer and removes the request. A box of a pilot this client did not start gets a
refusal; a box that is not this user's alone (another user made it or may write to it) is
not read at all, and a request file another user wrote is ignored.
Files and boxes nobody touched for ``mailbox.stale_after`` are removed. See
:mod:`glidein_client.sharedfs.mailbox` for the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

import msgspec

from glidein_client.sharedfs import mailbox as mb
from glidein_client.sharedfs.private import private_dir, unsafe_reason
from glidein_client.site.firewall.forwarder import PilotForwarder, PilotTokens, error_body
from glidein_client.wire.errors import GlideinError
from glidein_client.wire.staging import StagedOutput

log = logging.getLogger(__name__)
SWEEP_EVERY_S = 60.0
FULL_SCAN_S = 2.0  # read every box this often, for requests whose ring was lost
MIN_POLL_S = 0.002
HOT_S = 1.0  # poll every MIN_POLL_S for this long after the last request
REMEMBER_S = 600.0  # answered requests are remembered this long, so a late directory listing never repeats one


class MailboxService:
    def __init__(
        self,
        root: str | Path,
        site: str,
        tokens: PilotTokens,
        forwarder: PilotForwarder,
        *,
        poll_s: float = 0.2,
        stale_s: float = 3600.0,
        max_in_flight: int = 256,
    ) -> None:
        self.root = Path(root)
        self.site = site
        self.tokens = tokens
        self.forwarder = forwarder
        self.poll_s = poll_s
        self.stale_s = stale_s
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[str] = set()
        self._answered: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsafe: set[str] = set()  # boxes reported as not private
        self.answered = 0

    def box(self, pilot_id: int) -> Path:
        return self.root / mb.box_name(self.site, pilot_id)

    async def open(self) -> None:
        """Make the mailbox directory (0700), or check that the one there is this user's alone."""
        await asyncio.to_thread(private_dir, self.root, "mailbox directory", parents=True)

    async def prepare(self, pilot_id: int) -> Path:
        """Make the box of a pilot about to be submitted, exclusively (0700).

        A box that is already there is used only if it is this user's and private: one made by
        another user is refused (:class:`ConfigError`), so the pilot is not submitted with it.
        """
        await self.open()
        box = self.box(pilot_id)
        await asyncio.to_thread(private_dir, box, "pilot mailbox")
        return box

    async def run(self, stop: asyncio.Event) -> None:
        """Answer requests until ``stop`` is set, then let the calls in progress finish."""
        await self.open()
        log.info("site %s: answering pilots through the mailbox %s", self.site, self.root)
        delay = self.poll_s
        swept = scanned = last_traffic = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                full = now - scanned >= FULL_SCAN_S
                if full:
                    scanned = now
                try:
                    if await self.scan(full=full):
                        last_traffic = now
                    if now - swept >= SWEEP_EVERY_S:
                        swept = now
                        await self.sweep()
                except OSError as exc:
                    log.error(
                        "site %s: cannot read the mailbox %s: %s. Check that it exists and is readable.",
                        self.site,
                        self.root,
                        exc,
                    )
                delay = MIN_POLL_S if now - last_traffic < HOT_S else min(self.poll_s, delay * 2)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=10.0)

    async def scan(self, *, full: bool = True) -> int:
        """Start answering new requests (of the boxes that rang, or of all); returns how many were found."""
        pending = await asyncio.to_thread(self._pending, full)
        for box, path in pending:
            msg_id = mb.message_id(path)
            self._in_flight.add(msg_id)
            task = asyncio.create_task(self._answer(box, path, msg_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(pending)

    def _pending(self, full: bool) -> list[tuple[Path, Path]]:
        now = time.monotonic()
        for msg_id, at in list(self._answered.items()):
            if now - at > REMEMBER_S:
                del self._answered[msg_id]
        names, rings = mb.rung(self.root)
        for path in rings:
            path.unlink(missing_ok=True)
        if full:
            boxes = list(mb.boxes(self.root, self.site))
        else:
            prefix = f"glidein-{self.site}-"
            boxes = [self.root / name for name in sorted(names) if name.startswith(prefix)]
        out = []
        for box in boxes:
            if not self._private(box):
                continue
            for path in mb.requests_in(box):
                msg_id = mb.message_id(path)
                if msg_id not in self._in_flight and msg_id not in self._answered:
                    out.append((box, path))
        return out

    def _private(self, box: Path) -> bool:
        """Whether ``box`` is this user's alone; a box anyone else made or may write is never read."""
        try:
            reason = unsafe_reason(os.lstat(box), os.geteuid())
        except FileNotFoundError:
            return False
        if reason is None:
            self._unsafe.discard(box.name)
            return True
        if box.name not in self._unsafe:  # once per box, not on every scan
            self._unsafe.add(box.name)
            log.error(
                "site %s: the mailbox %s %s; its requests are not read and no token is used for it. "
                "Remove it, or run chmod 700 on it if it is yours.",
                self.site,
                box,
                reason,
            )
        return False

    async def sweep(self) -> None:
        removed = await asyncio.to_thread(mb.sweep, self.root, self.site, self.stale_s)
        if removed:
            log.info("site %s: removed %d stale mailbox files", self.site, removed)

    async def _answer(self, box: Path, path: Path, msg_id: str) -> None:
        try:
            async with self._slots:
                try:
                    status, body = await self._dispatch(box, path)
                except mb.ForeignMessage as exc:
                    log.error("site %s: %s %s", self.site, exc.message, exc.hint)
                    await asyncio.to_thread(path.unlink, missing_ok=True)
                    return
            with contextlib.suppress(FileNotFoundError):  # the pilot gave up and its box is gone
                await asyncio.to_thread(
                    mb.write_message,
                    mb.response_path(box, msg_id),
                    mb.MailResponse(id=msg_id, status=status, body=msgspec.Raw(body)),
                )
            await asyncio.to_thread(path.unlink, missing_ok=True)
            self.answered += 1
        except OSError as exc:
            log.warning("site %s: cannot answer %s in %s: %s", self.site, path.name, box, exc)
        finally:
            self._answered[msg_id] = time.monotonic()
            self._in_flight.discard(msg_id)

    async def _dispatch(self, box: Path, path: Path) -> tuple[int, bytes]:
        try:
            req = await asyncio.to_thread(mb.read_message, path, mb.MailRequest)
        except FileNotFoundError:
            return error_body(410, "The request was withdrawn.")
        except mb.ForeignMessage:
            raise
        except GlideinError as exc:
            return error_body(400, exc.message, exc.hint)
        pilot_id = mb.pilot_of(box, self.site)
        token = await asyncio.to_thread(self.tokens.token_of, pilot_id) if pilot_id is not None else None
        if token is None:
            return error_body(
                403,
                f"The mailbox {box.name} belongs to no pilot that the site client of "
                f"{self.site} started; it is not forwarded.",
            )
        body = bytes(req.body)
        if req.op == mb.UPLOAD_OP:
            try:
                out = msgspec.json.decode(body, type=StagedOutput)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return error_body(400, f"The staged output request is invalid: {exc}.")
            return await self.forwarder.upload_staged(token, out)
        if req.op not in mb.OPS:
            return error_body(400, f"The mailbox operation {req.op!r} is not known.")
        method, route = mb.OPS[req.op]
        return await self.forwarder.forward(token, method, route, None if method == "GET" else body)
