"""Routes that change a job at its owner's request: hold, release, and retry with new requirements.

As condor_hold and condor_release: a held job stays out of the queue (never claimed, not in any
site's demand) until released; a running job that is held is stopped on its pilot the way a
cancel is (its waiting sync answers at once) and stays held. A retry puts a failed, cancelled or
held job back in the queue, with new cores, memory, GPUs, walltime or sites where given. Each act
is kept in the job's history with who did it and why.
"""

from __future__ import annotations

import logging
import time
from typing import TypeVar

from aiohttp import web

from glidein_client.wire.codec import decode
from glidein_client.wire.errors import NotFoundError, ValidationError
from glidein_client.wire.schema import HoldRequest, JobView, RetryRequest, Role
from glidein_server.http.pilot_news import PilotNews
from glidein_server.http.routing import Guard, Route, json_response, parse_int
from glidein_server.store.base import JobAct, Principal, Store

log = logging.getLogger(__name__)
T = TypeVar("T", HoldRequest, RetryRequest)


class JobActionsApi:
    """Handlers of the hold, release and retry routes; :class:`~glidein_server.http.app.Api` lists them."""

    def __init__(self, guard: Guard, store: Store, news: PilotNews) -> None:
        self.guard = guard
        self.store = store
        self.news = news

    def routes(self) -> list[Route]:
        U, OP = Role.USER, Role.OPERATOR
        return [
            Route(
                "POST",
                "/jobs/{job_id}/hold",
                self.hold,
                "Hold a job: it is not claimed until released; a running one is stopped and stays held.",
                (U, OP),
                HoldRequest,
                JobView,
            ),
            Route(
                "POST",
                "/jobs/{job_id}/release",
                self.release,
                "Release a held job back into the queue.",
                (U, OP),
                HoldRequest,
                JobView,
            ),
            Route(
                "POST",
                "/jobs/{job_id}/retry",
                self.retry,
                "Put a failed, cancelled or held job back in the queue, with new requirements where given.",
                (U, OP),
                RetryRequest,
                JobView,
            ),
        ]

    async def _act(self, request: web.Request, body_type: type[T]) -> tuple[int, JobAct, T]:
        principal = await self.guard.who(request, Role.USER, Role.OPERATOR)
        job_id = parse_int(request.match_info["job_id"], "job id")
        await self._check_owner(principal, job_id)
        raw = await request.read()
        body = decode(raw, body_type, what="request") if raw.strip() else body_type()
        return job_id, JobAct(by=principal.subject, at=time.time(), reason=body.reason or None), body

    async def _check_owner(self, principal: Principal, job_id: int) -> None:
        if principal.role is Role.USER:
            job = await self.store.get_job(job_id)
            if job is None or job.owner != principal.subject:
                raise NotFoundError(f"Job {job_id} does not exist or is not yours.")

    async def hold(self, request: web.Request) -> web.Response:
        job_id, act, _ = await self._act(request, HoldRequest)
        job = await self.store.hold_job(job_id, act)
        log.info("%s held job %d", act.by, job_id)
        self.guard.demand_changed.notify()  # it left the demand
        return json_response(await self.news.cancelled(job))  # its pilot stops it at once

    async def release(self, request: web.Request) -> web.Response:
        job_id, act, _ = await self._act(request, HoldRequest)
        job = await self.store.release_job(job_id, act)
        log.info("%s released job %d", act.by, job_id)
        self.guard.new_work()
        return json_response(job)

    async def retry(self, request: web.Request) -> web.Response:
        job_id, act, req = await self._act(request, RetryRequest)
        if req.sites:
            await self._check_sites(req.sites)
        job = await self.store.retry_job(job_id, act, req)
        log.info("%s retried job %d", act.by, job_id)
        self.guard.new_work()
        return json_response(job)

    async def _check_sites(self, sites: list[str]) -> None:
        """Every site named must exist: it has a token, or its client has reported to this server."""
        known = set(await self.store.site_shapes())
        known.update(t.subject for t in await self.store.list_tokens(Role.SITE, None))
        unknown = sorted(set(sites) - known)
        if unknown:
            listed = ", ".join(sorted(known)[:20]) or "none yet"
            raise ValidationError(
                f"There is no site named {', '.join(map(repr, unknown))}.",
                hint=f"The sites this server knows: {listed}.",
                field="sites",
            )
