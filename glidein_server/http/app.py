"""The REST API (``/api/v1``) as an aiohttp application."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from glidein_client.wire.codec import decode
from glidein_client.wire.errors import NotFoundError, ValidationError
from glidein_client.wire.rules import check_job, check_relative_path
from glidein_client.wire.schema import (
    AttemptView,
    Demand,
    JobIds,
    JobList,
    JobSubmit,
    JobView,
    OutputFile,
    PilotExit,
    PilotGrant,
    PilotGrantRequest,
    PilotRegister,
    PilotRegistered,
    PilotShape,
    PilotStates,
    Role,
    SiteWait,
    SiteWaitResult,
    Summary,
    SyncRequest,
    SyncResponse,
)
from glidein_server.http import auth, monitoring, ratelimit
from glidein_server.http.admin import AdminApi
from glidein_server.http.inputs import check_inputs, own_netlocs
from glidein_server.http.job_actions import JobActionsApi
from glidein_server.http.openapi import document
from glidein_server.http.pilot_news import PilotNews
from glidein_server.http.pilot_tokens import PilotTokens
from glidein_server.http.routing import (
    API,
    Guard,
    Route,
    error_middleware,
    json_response,
    parse_choice,
    parse_count,
    parse_int,
    parse_sha,
)
from glidein_server.http.staging import StagingApi
from glidein_server.metrics import Metrics, MetricsConfig
from glidein_server.store.base import JobFilter, Principal, Store
from glidein_server.store.files import FileStore

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    lease_s: float = 60.0
    heartbeat_s: float = 10.0
    pilot_timeout_s: float = 180.0
    max_request_bytes: int = 64 << 20
    reaper_interval_s: float = 2.0
    rate_limits: ratelimit.RateLimits = field(default_factory=ratelimit.RateLimits)
    totp_key: bytes | None = field(default=None, repr=False)  # encrypts operators' TOTP secrets
    pilot_token_grace_s: float = 3600.0  # pilot tokens outlive their queue wait plus walltime by this
    pilot_token_max_s: float = 30 * 86400.0
    public_url: str = ""  # how clients reach this server, beside the Host they send
    metrics: MetricsConfig | None = field(default_factory=MetricsConfig)  # None: no /metrics, no instruments


class Api:
    def __init__(self, store: Store, files: FileStore, config: ServerConfig) -> None:
        self.store = store
        self.files = files
        self.config = config
        self.auth = auth.Authenticator(store)
        self.guard = Guard(self.auth)
        self.work = self.guard.work  # wakes pilots waiting for something to claim
        self.demand_changed = self.guard.demand_changed  # wakes site clients waiting for new demand
        self.pilot_tokens = PilotTokens(
            store, self.auth, grace_s=config.pilot_token_grace_s, max_s=config.pilot_token_max_s
        )
        self.news = PilotNews(store, self.guard.pilots, self.work, wait_s=config.heartbeat_s, lease_s=config.lease_s)
        self.limiter = ratelimit.RateLimiter(config.rate_limits)
        self.admin = AdminApi(self.guard, store, config.totp_key)
        self.staging = StagingApi(self.guard, store, files)
        self.job_actions = JobActionsApi(self.guard, store, self.news)
        self.metrics = Metrics(store, config.metrics) if config.metrics else None
        self._tokens_purged_at = 0.0
        self.routes = self._routes()

    # --- plumbing ---------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        U, OP, S, P = Role.USER, Role.OPERATOR, Role.SITE, Role.PILOT
        return [
            Route("GET", "/health", self.health, "Liveness check; needs no token.", ()),
            Route("GET", "/openapi.json", self.openapi, "This API's OpenAPI document.", ()),
            Route(
                "POST",
                "/jobs",
                self.submit,
                "Submit one or many jobs (up to 10,000 per request).",
                (U, OP),
                JobSubmit,
                JobIds,
            ),
            Route(
                "GET",
                "/jobs",
                self.list_jobs,
                "List jobs in id order; filters: state, owner (operator), label=key=value (repeatable: all must "
                "match), ids=1,2,3; limit; after=ID (the last id of the previous page: the next page costs what "
                "the first does), order=desc (newest first; after then means older), counts=0 (no counts per "
                "state, for later pages), offset (deep offsets are slow: page with after).",
                (U, OP),
                None,
                JobList,
            ),
            Route("GET", "/jobs/{job_id}", self.get_job, "Show one job.", (U, OP), None, JobView),
            Route("POST", "/jobs/{job_id}/cancel", self.cancel, "Cancel a job.", (U, OP), None, JobView),
            *self.job_actions.routes(),
            Route(
                "GET",
                "/jobs/{job_id}/attempts",
                self.attempts,
                "Attempts of a job, with log tails.",
                (U, OP),
                None,
                list[AttemptView],
            ),
            Route(
                "GET",
                "/jobs/{job_id}/outputs",
                self.job_output,
                "Download an output (?name=).",
                (U, OP),
                None,
                None,
                True,
            ),
            Route(
                "PUT",
                "/files/{sha256}",
                self.put_file,
                "Upload an input file, addressed by its sha256.",
                (U, OP),
                None,
                OutputFile,
                True,
            ),
            Route("GET", "/files/{sha256}", self.get_file, "Download a stored file.", (U, OP, P), None, None, True),
            Route(
                "POST",
                "/sites/{site}/demand",
                self.demand,
                "Report the site's pilot shape and get its demand.",
                (S, OP),
                PilotShape,
                Demand,
            ),
            Route(
                "POST",
                "/sites/{site}/pilots",
                self.new_pilot,
                "Mint a pilot id and its token, valid for the pilot's queue wait plus walltime and renewed by "
                "its heartbeats.",
                (S, OP),
                PilotGrantRequest,
                PilotGrant,
            ),
            Route(
                "POST",
                "/sites/{site}/wait",
                self.site_wait,
                "Long poll: answers as soon as new work may change the demand, or at the timeout.",
                (S, OP),
                SiteWait,
                SiteWaitResult,
            ),
            Route(
                "POST",
                "/sites/{site}/pilot-states",
                self.pilot_states,
                "Report the batch system's view of the site's pilots.",
                (S, OP),
                PilotStates,
                None,
            ),
            Route(
                "POST",
                "/pilot/register",
                self.register,
                "A pilot starts and reports its resources.",
                (P,),
                PilotRegister,
                PilotRegistered,
            ),
            Route(
                "POST",
                "/pilot/sync",
                self.sync,
                "Reports, heartbeat and claim in one round trip.",
                (P,),
                SyncRequest,
                SyncResponse,
            ),
            Route(
                "PUT",
                "/pilot/attempts/{attempt_id}/outputs",
                self.put_output,
                "Upload an output of an attempt (?name=; headers X-Glidein-Lease, X-Glidein-Sha256).",
                (P,),
                None,
                OutputFile,
                True,
            ),
            Route("POST", "/pilot/exit", self.pilot_exit, "A pilot leaves.", (P,), PilotExit, None),
            Route(
                "GET", "/summary", self.summary, "Counts of jobs and pilots, sites, occupancy.", (U, OP), None, Summary
            ),
            *self.staging.routes(),
            *self.admin.routes(),
        ]

    def make_app(self) -> web.Application:
        app = web.Application(
            middlewares=[
                error_middleware(self.config.max_request_bytes),
                ratelimit.middleware(self.limiter, self.auth),
            ],
            client_max_size=self.config.max_request_bytes,
        )
        for r in self.routes:
            app.router.add_route(r.method, API + r.path, r.handler)
        if self.metrics is not None:
            monitoring.mount(app, self.guard, self.store, self.metrics)
        app.cleanup_ctx.append(self._reaper_ctx)
        app.on_shutdown.append(self._wake_long_polls)
        return app

    async def _wake_long_polls(self, app: web.Application) -> None:
        """Answer waiting pilots and clients at once so that shutting down does not wait for them."""
        self.work.notify()
        self.demand_changed.notify()
        self.news.pilots.wake_all()

    async def _reaper_ctx(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self._reaper())
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(self.config.reaper_interval_s)
            try:
                n = await self.store.expire(time.time(), self.config.pilot_timeout_s)
                if n:
                    log.info("requeued %d attempts whose lease expired", n)
                    self.guard.new_work()
            except Exception:
                log.exception("lease reaper failed; will try again")

    async def _own_job(self, request: web.Request) -> tuple[Principal, int]:
        principal = await self.guard.who(request, Role.USER, Role.OPERATOR)
        job_id = parse_int(request.match_info["job_id"], "job id")
        if principal.role is Role.USER:
            job = await self.store.get_job(job_id)
            if job is None or job.owner != principal.subject:
                raise NotFoundError(f"Job {job_id} does not exist or is not yours.")
        return principal, job_id

    # --- handlers: users --------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True, "api": "v1"})

    async def openapi(self, request: web.Request) -> web.Response:
        return json_response(document(self.routes))

    async def submit(self, request: web.Request) -> web.Response:
        principal = await self.guard.who(request, Role.USER, Role.OPERATOR)
        body: JobSubmit = await self.guard.body(request, JobSubmit, "job submission")
        texts = b"\\u0000" in await request.read()  # the body, read already: only JSON can hold a NUL
        for i, spec in enumerate(body.jobs):
            check_job(spec, i, texts=texts)
        own = own_netlocs(request.host, self.config.public_url)
        await check_inputs(body.jobs, principal, self.store, self.files, own)
        ids = await self.store.add_jobs(principal.subject, body.jobs, time.time())
        log.info("%s submitted %d jobs (%d-%d)", principal.subject, len(ids), ids[0], ids[-1])
        self.guard.new_work()
        return json_response(JobIds(ids=ids), status=201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        principal = await self.guard.who(request, Role.USER, Role.OPERATOR)
        q = request.query
        owner = principal.subject if principal.role is Role.USER else q.get("owner")
        labels = []
        for text in q.getall("label", []):
            key, sep, value = text.partition("=")
            if not sep:
                raise ValidationError("label filter must look like key=value.", field="label")
            labels.append((key, value))
        ids = tuple(parse_int(x, "ids") for x in q["ids"].split(",") if x) if q.get("ids") else None
        after = q.get("after")
        flt = JobFilter(
            owner=owner,
            state=q.get("state"),
            labels=tuple(labels),
            ids=ids,
            limit=min(parse_count(q.get("limit", "1000"), "limit"), 10_000),
            offset=parse_count(q.get("offset", "0"), "offset"),
            after=None if after is None else parse_int(after, "after"),
            newest_first=parse_choice(q, "order", ("asc", "desc")) == "desc",
            counts=parse_choice(q, "counts", ("1", "0")) == "1",
        )
        jobs, counts = await self.store.list_jobs(flt)
        return json_response(JobList(jobs=jobs, counts=counts))

    async def get_job(self, request: web.Request) -> web.Response:
        _, job_id = await self._own_job(request)
        job = await self.store.get_job(job_id)
        if job is None:
            raise NotFoundError(f"Job {job_id} does not exist.")
        return json_response(job)

    async def cancel(self, request: web.Request) -> web.Response:
        _, job_id = await self._own_job(request)
        return json_response(await self.news.cancelled(await self.store.cancel_job(job_id, time.time())))

    async def attempts(self, request: web.Request) -> web.Response:
        _, job_id = await self._own_job(request)
        return json_response(await self.store.attempts_of(job_id))

    async def job_output(self, request: web.Request) -> web.StreamResponse:
        _, job_id = await self._own_job(request)
        name = request.query.get("name", "")
        out = await self.store.job_output(job_id, name)
        if out is None:
            raise NotFoundError(
                f"Job {job_id} has no output named {name!r} (yet).",
                hint="`glidein status` shows a job's outputs once it is done.",
            )
        return web.FileResponse(self.files.path(out.sha256))

    async def put_file(self, request: web.Request) -> web.Response:
        principal = await self.guard.who(request, Role.USER, Role.OPERATOR)
        sha = parse_sha(request.match_info["sha256"])
        size = await self.files.put(sha, request.content)
        await self.store.add_file_owner(sha, principal.subject, size)
        if self.metrics is not None:
            self.metrics.staging_bytes.add("input", size)
        return json_response(OutputFile(name=sha, sha256=sha, size=size), status=201)

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        principal = await self.guard.who(request, Role.USER, Role.OPERATOR, Role.PILOT)
        sha = parse_sha(request.match_info["sha256"])
        if not self.files.exists(sha) or not await self.store.may_read_file(sha, principal):
            raise NotFoundError("No such file, or it is not yours to read.")
        return web.FileResponse(self.files.path(sha))

    async def summary(self, request: web.Request) -> web.Response:
        principal = await self.guard.who(request, Role.USER, Role.OPERATOR)
        owner = principal.subject if principal.role is Role.USER else None
        return json_response(await self.store.summary(owner))

    # --- handlers: site clients -------------------------------------------------------------

    async def demand(self, request: web.Request) -> web.Response:
        site, _ = await self.guard.site(request, Role.SITE, Role.OPERATOR)
        shape: PilotShape = await self.guard.body(request, PilotShape, "pilot shape")
        now = time.time()
        await self.store.report_site(site, shape, now)
        return json_response(await self.store.site_demand(site, now, now - self.config.pilot_timeout_s))

    async def new_pilot(self, request: web.Request) -> web.Response:
        site, _ = await self.guard.site(request, Role.SITE, Role.OPERATOR)
        grant: PilotGrantRequest = decode(await request.read() or b"{}", PilotGrantRequest, what="pilot grant")
        now = time.time()
        expires_at = now + await self.pilot_tokens.life_s(site, grant)
        pilot_id = await self.store.new_pilot(site, now)
        token = auth.new_token()
        token_id = await self.store.add_token(auth.hash_token(token), Role.PILOT, str(pilot_id), expires_at)
        log.info(
            "site %s: minted pilot %d (token %s, valid %.1f h unless renewed)",
            site,
            pilot_id,
            token_id,
            (expires_at - now) / 3600,
        )
        if now - self._tokens_purged_at > 3600:
            self._tokens_purged_at = now
            await self.store.purge_tokens(now - 7 * 86400)  # expired or revoked a week ago
        return json_response(PilotGrant(pilot_id=pilot_id, token=token, expires_at=expires_at), status=201)

    async def site_wait(self, request: web.Request) -> web.Response:
        site, _ = await self.guard.site(request, Role.SITE, Role.OPERATOR)
        body: SiteWait = await self.guard.body(request, SiteWait, "site wait")
        changed = await self.demand_changed.wait(body.timeout_s, body.since)
        return json_response(SiteWaitResult(changed=changed, generation=self.demand_changed.generation))

    async def pilot_states(self, request: web.Request) -> web.Response:
        site, _ = await self.guard.site(request, Role.SITE, Role.OPERATOR)
        body: PilotStates = await self.guard.body(request, PilotStates, "pilot states")
        states = {parse_int(k, "pilot id"): v for k, v in body.states.items()}
        ended = await self.store.pilot_states(site, states, time.time(), body.failure)
        if ended:
            log.info("site %s: %d pilots ended in the batch system; their jobs are back in the queue", site, ended)
            self.guard.new_work()
        return json_response({"ended": ended})

    # --- handlers: pilots -------------------------------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        principal = await self.guard.who(request, Role.PILOT)
        req: PilotRegister = await self.guard.body(request, PilotRegister, "pilot registration")
        await self.store.register_pilot(int(principal.subject), req, time.time())
        await self.pilot_tokens.renew(principal, req.end_time - time.time())
        r = req.resources
        log.info(
            "pilot %s registered: %d cpus, %d MB, %d GPUs on %r (%r)%s",
            principal.subject,
            r.cpus,
            r.memory_mb,
            r.gpus,
            req.host,
            req.batch_id,
            "" if req.selftest_ok else f"; self-test FAILED: {req.selftest_reason!r}",
        )
        return json_response(
            PilotRegistered(
                pilot_id=int(principal.subject), heartbeat_s=self.config.heartbeat_s, lease_s=self.config.lease_s
            )
        )

    async def sync(self, request: web.Request) -> web.Response:
        principal = await self.guard.who(request, Role.PILOT)
        pilot_id = int(principal.subject)
        req: SyncRequest = await self.guard.body(request, SyncRequest, "pilot sync")
        mark = self.news.pilots.mark(pilot_id)  # a cancel or report from here on answers this sync's long poll
        t0 = time.time()
        resp = await self.store.sync(pilot_id, req, t0, self.config.lease_s)
        if self.metrics is not None:
            self.metrics.claim_latency.observe(time.time() - t0)
        await self.pilot_tokens.renew(principal, req.lifetime_s)
        if req.finished:
            self.work.notify()  # requeued or retried jobs may be claimable elsewhere
        resp = await self.news.answer(pilot_id, req, resp, mark)
        if self.metrics is not None:
            self.metrics.sync_latency.observe(time.time() - t0)
        return json_response(resp)

    async def put_output(self, request: web.Request) -> web.Response:
        principal = await self.guard.who(request, Role.PILOT)
        attempt_id = parse_int(request.match_info["attempt_id"], "attempt id")
        name = check_relative_path(request.query.get("name", ""), field="name")
        lease = request.headers.get("X-Glidein-Lease", "")
        sha = parse_sha(request.headers.get("X-Glidein-Sha256", ""))
        async with self.files.incoming(sha, request.content) as size:  # kept only once recorded
            await self.store.record_output(int(principal.subject), attempt_id, lease, name, sha, size)
        if self.metrics is not None:
            self.metrics.staging_bytes.add("output", size)
        return json_response(OutputFile(name=name, sha256=sha, size=size), status=201)

    async def pilot_exit(self, request: web.Request) -> web.Response:
        principal = await self.guard.who(request, Role.PILOT)
        req: PilotExit = await self.guard.body(request, PilotExit, "pilot exit")
        await self.store.pilot_exit(int(principal.subject), req.reason, req.occupancy, req.jobs_run, time.time())
        self.news.pilots.forget(int(principal.subject))
        log.info(
            "pilot %s left: %r (occupancy %.0f%%, %d jobs)",
            principal.subject,
            req.reason,
            100 * req.occupancy,
            req.jobs_run,
        )
        self.work.notify()
        return json_response({"ok": True})
