"""Routes for firewalled sites: the site client's side of out-of-job staging.

A site whose worker nodes cannot reach the server declares a staging network ("relay" or
"none"). From then on its pilots claim only jobs that its client reported staged: the client
reads the idle jobs eligible at the site with their inputs, copies those inputs from the
server (or their URLs) into the site's staging area, verifies their sha256 and reports the
jobs staged; it releases them when they finish or run elsewhere.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from glidein_client.wire.errors import NotFoundError
from glidein_client.wire.schema import Role
from glidein_client.wire.staging import Network, SiteNetwork, StagingReport, StagingResult, StagingView
from glidein_server.http.routing import Guard, Route, json_response, parse_int, parse_sha
from glidein_server.store.base import Principal, Store
from glidein_server.store.files import FileStore

log = logging.getLogger(__name__)
#: Most eligible jobs one staging view lists.
MAX_VIEW = 10_000
_HOW = {
    Network.DIRECT: "directly",
    Network.RELAY: "through a login-node relay (data staged by the client)",
    Network.NONE: "through a shared-filesystem mailbox (data staged by the client)",
}


class StagingApi:
    """Handlers of the staging routes; the route table of :class:`~glidein_server.http.app.Api` lists them."""

    def __init__(self, guard: Guard, store: Store, files: FileStore) -> None:
        self.guard = guard
        self.store = store
        self.files = files

    def routes(self) -> list[Route]:
        S, OP = Role.SITE, Role.OPERATOR
        return [
            Route(
                "PUT",
                "/sites/{site}/network",
                self.set_network,
                "Declare how the site's pilots reach the server (direct, relay, none); relay and none sites "
                "claim only jobs their client staged.",
                (S, OP),
                SiteNetwork,
                SiteNetwork,
            ),
            Route(
                "GET",
                "/sites/{site}/staging",
                self.view,
                "Jobs staged at the site (with their state) and idle jobs eligible there with their inputs "
                "(?limit=, default 1000).",
                (S, OP),
                None,
                StagingView,
            ),
            Route(
                "POST",
                "/sites/{site}/staging",
                self.report,
                "Report jobs whose inputs are verified in the site's staging area, and release others.",
                (S, OP),
                StagingReport,
                StagingResult,
            ),
            Route(
                "GET",
                "/sites/{site}/files/{sha256}",
                self.get_file,
                "Download an input of a job that may run at the site.",
                (S, OP),
                None,
                None,
                True,
            ),
        ]

    async def _site(self, request: web.Request) -> tuple[str, Principal]:
        return await self.guard.site(request, Role.SITE, Role.OPERATOR)

    async def set_network(self, request: web.Request) -> web.Response:
        site, _ = await self._site(request)
        body: SiteNetwork = await self.guard.body(request, SiteNetwork, "site network")
        if await self.store.set_site_network(site, body.network, time.time()):
            log.info("site %s: pilots reach the server %s", site, _HOW[body.network])
            self.guard.work.notify()  # waiting pilots of the site may now claim other jobs
        return json_response(body)

    async def view(self, request: web.Request) -> web.Response:
        site, _ = await self._site(request)
        limit = min(max(parse_int(request.query.get("limit", "1000"), "limit"), 0), MAX_VIEW)
        return json_response(await self.store.staging_view(site, limit))

    async def report(self, request: web.Request) -> web.Response:
        site, _ = await self._site(request)
        body: StagingReport = await self.guard.body(request, StagingReport, "staging report")
        staged, released = await self.store.report_staging(site, body.staged, body.released, time.time())
        if staged:
            log.info("site %s: %d jobs staged", site, staged)
            self.guard.new_work()  # waiting pilots of the site can claim them, and its client wants more pilots
        return json_response(StagingResult(staged=staged, released=released))

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        _, principal = await self._site(request)
        sha = parse_sha(request.match_info["sha256"])
        if not self.files.exists(sha) or not await self.store.may_read_file(sha, principal):
            raise NotFoundError(
                "No such file, or no job that may run at this site needs it.",
                hint="Only inputs of unfinished jobs that may run at the site can be staged.",
            )
        return web.FileResponse(self.files.path(sha))
