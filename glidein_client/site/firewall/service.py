"""What the site client of a firewalled site (``site.network`` "relay" or "none") runs beside its cycle.

- It declares the site's network to the server, so that the site's pilots claim only jobs
  whose inputs it staged.
- It stages inputs (:class:`~glidein_client.site.firewall.stager.Stager`): one pass per cycle with
  ``glidein-client once``; with ``glidein-client run`` a pass every ``staging.poll_s`` and as
  soon as new work arrives or a pilot reports jobs finished.
- With ``glidein-client run`` it serves the pilots: the login-node relay
  (:mod:`glidein_client.site.firewall.relay`) or the shared-filesystem mailbox
  (:mod:`glidein_client.site.firewall.mailbox_service`). Pilots of such a site can only work while it runs,
  so ``once`` submits none.
- It asks for no more pilots than the staged jobs can keep busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator
from types import TracebackType

import msgspec

from glidein_client.sharedfs.staging_area import StagingArea
from glidein_client.site.config import SiteConfig
from glidein_client.site.firewall.forwarder import PilotForwarder, PilotTokens
from glidein_client.site.firewall.mailbox_service import MailboxService
from glidein_client.site.firewall.relay import Relay
from glidein_client.site.firewall.stager import Stager
from glidein_client.wire.api import ApiClient
from glidein_client.wire.errors import GlideinError, ServerUnreachable
from glidein_client.wire.schema import Demand
from glidein_client.wire.staging import Network

log = logging.getLogger(__name__)


def pilot_network_options(site: SiteConfig, workdir: str) -> dict[str, str]:
    """Command-line options of a pilot of ``site`` for its network (none for ``direct``)."""
    if not site.network.stages or site.staging is None:
        return {}
    options = {"--staging-dir": site.staging.dir}
    if site.network is Network.RELAY and site.relay is not None:
        options.update({"--channel": "relay", "--url": site.relay.pilot_url})
    elif site.mailbox is not None:
        options.update(
            {"--channel": "mailbox", "--mailbox-dir": os.path.join(site.mailbox.dir, os.path.basename(workdir))}
        )
    return options


class Firewall:
    """Staging, and the relay or mailbox, of one site. Use as ``async with Firewall(site, api)``."""

    def __init__(self, site: SiteConfig, api: ApiClient) -> None:
        if site.staging is None:
            raise ValueError(f"site {site.name} has no [staging] section")
        self.site = site
        self.api = api
        self.area = StagingArea(site.staging.dir)
        self.tokens = PilotTokens(os.path.join(site.site.scratch_dir, "pilots-meta"), site.name)
        self.stager = Stager(site, api, self.area)
        self.relay: Relay | None = None
        self.mailbox: MailboxService | None = None
        self.serving = False
        self._declared = False
        self._warned = False
        self._wake = asyncio.Event()

    async def __aenter__(self) -> Firewall:
        await self.stager.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stager.__aexit__(et, e, tb)

    # --- hooks of the site client's cycle -------------------------------------------------------

    async def before_cycle(self) -> None:
        """Declare the network (once per session); without the daemon's services, stage one pass."""
        await self._declare()
        if not self.serving:
            await self.stager.run_pass()

    def cap(self, demand: Demand) -> Demand:
        """No more pilots than the staged jobs need; none while nobody serves the pilots' messages."""
        if not self.serving:
            if not self._warned:
                self._warned = True
                log.warning(
                    "site %s: network %s: pilots reach the server only through the site client, so they are "
                    "submitted by `glidein-client run` only; this run stages inputs and submits none",
                    self.site.name,
                    self.site.network.value,
                )
            return msgspec.structs.replace(demand, pilots=0)
        ready = math.ceil(self.stager.ready_cpus / self.site.shape.cpus)
        return msgspec.structs.replace(demand, pilots=min(demand.pilots, ready))

    async def add_pilot(self, pilot_id: int, token: str) -> None:
        """A pilot is about to be submitted: make its mailbox (refused if another user made it), trust its token."""
        if self.mailbox is not None:
            await self.mailbox.prepare(pilot_id)
        self.tokens.add(pilot_id, token)

    def wake(self) -> None:
        """Run a staging pass now (new work, or jobs finished)."""
        self._wake.set()

    # --- the daemon's services ------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[None]:
        """Serve the pilots and stage continuously for the block (``glidein-client run``)."""
        site = self.site
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            forwarder = await stack.enter_async_context(
                PilotForwarder(site.site.server_url, self.area, ca_file=site.site.ca_file, on_finished=self.wake)
            )
            if site.relay is not None:
                self.relay = await stack.enter_async_context(
                    Relay(site.name, site.relay.address, site.relay.port, self.tokens, forwarder)
                )
            tasks = [asyncio.create_task(self._stage_forever(stop), name="staging")]
            if site.mailbox is not None:
                self.mailbox = MailboxService(
                    site.mailbox.dir,
                    site.name,
                    self.tokens,
                    forwarder,
                    poll_s=site.mailbox.poll_s,
                    stale_s=site.mailbox_stale_s,
                )
                await self.mailbox.open()  # a mailbox directory that is not ours alone stops the run here
                tasks.append(asyncio.create_task(self.mailbox.run(stop), name="mailbox"))
            self.serving = True
            try:
                yield
            finally:
                self.serving = False
                stop.set()
                tasks[0].cancel()  # a staging pass stops mid-transfer; the next run goes on from the verified files
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _declare(self) -> None:
        if not self._declared:
            await self.api.set_site_network(self.site.name, self.site.network)
            await self.api.demand(self.site.name, self.site.shape)  # staging views filter by the pilots' shape
            self._declared = True

    async def _stage_forever(self, stop: asyncio.Event) -> None:
        conf = self.site.staging
        assert conf is not None
        delay = conf.poll_s
        while not stop.is_set():
            self._wake.clear()
            try:
                await self._declare()
                report = await self.stager.run_pass()
                delay = 0.0 if report.more else conf.poll_s
            except ServerUnreachable as exc:
                log.warning("site %s: staging: %s", self.site.name, exc.message)
                delay = min(max(delay * 2, 1.0), conf.poll_s * 6)
            except GlideinError as exc:
                log.error("site %s: staging: %s", self.site.name, exc)
                delay = conf.poll_s
            except OSError as exc:
                log.error(
                    "site %s: staging: the staging area %s failed: %s. Check that it exists, is writable "
                    "and has space.",
                    self.site.name,
                    conf.dir,
                    exc,
                )
                delay = conf.poll_s
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
