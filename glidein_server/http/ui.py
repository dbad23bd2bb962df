"""``/ui``: the read-only web dashboard, for operator tokens with the read scope.

Logging in posts the token once; it is kept in an HttpOnly, SameSite=Strict cookie scoped to
``/ui`` (Secure over HTTPS) and checked on every page like a bearer token, so revoking the token
logs the browser out. Pages are HTML with inline SVG and no script (see :mod:`glidein_server.dashboard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from glidein_client.wire.errors import GlideinError
from glidein_client.wire.schema import Role, Scope
from glidein_server import dashboard
from glidein_server.http import auth
from glidein_server.http.routing import Guard, parse_int
from glidein_server.metrics import MetricsConfig
from glidein_server.store.base import Store

log = logging.getLogger(__name__)
COOKIE = "glidein_ui"


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={
            "Content-Security-Policy": dashboard.CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


class UiApi:
    def __init__(self, guard: Guard, store: Store, config: MetricsConfig, sample_s: float = 10.0) -> None:
        self.guard = guard
        self.store = store
        self.config = config
        self.sample_s = sample_s
        self.history = dashboard.History(keep=max(1, int(3600 / sample_s)))

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/ui", self.overview)
        app.router.add_get("/ui/login", self.login_form)
        app.router.add_post("/ui/login", self.login)
        app.router.add_get("/ui/sites", self.sites)
        app.router.add_get("/ui/datasets", self.datasets)
        app.router.add_get("/ui/jobs/{job_id}", self.job)
        app.cleanup_ctx.append(self._sampler_ctx)

    async def _sampler_ctx(self, app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(self._sample())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _sample(self) -> None:
        while True:
            try:
                now = time.time()
                snap = await self.store.monitoring(now, self.config.dataset_key, now - self.config.pilot_timeout_s)
                self.history.add(now, snap)
            except Exception:
                log.exception("dashboard sample failed; will try again")
            await asyncio.sleep(self.sample_s)

    async def _allowed(self, request: web.Request) -> str | None:
        """None if the cookie's token may read the dashboard, else why not."""
        token = request.cookies.get(COOKIE)
        if not token:
            return ""
        try:
            principal = await self.guard.auth.principal(f"Bearer {token}")
            auth.require(principal, Role.OPERATOR)
            auth.require_scope(principal, Scope.READ)
        except GlideinError as exc:
            return exc.message
        return None

    async def _page(self, request: web.Request) -> web.Response | None:
        why = await self._allowed(request)
        return None if why is None else _html(dashboard.login_page(why), status=401)

    async def login_form(self, request: web.Request) -> web.Response:
        return _html(dashboard.login_page())

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", "")).strip()
        try:
            principal = await self.guard.auth.principal(f"Bearer {token}")
            auth.require(principal, Role.OPERATOR)
            auth.require_scope(principal, Scope.READ)
        except GlideinError as exc:
            return _html(dashboard.login_page(exc.message), status=401)
        response = web.HTTPSeeOther("/ui")
        response.set_cookie(
            COOKIE, token, path="/ui", httponly=True, samesite="Strict", secure=request.secure, max_age=12 * 3600
        )
        raise response

    async def overview(self, request: web.Request) -> web.Response:
        if (refused := await self._page(request)) is not None:
            return refused
        now = time.time()
        snap = await self.store.monitoring(now, self.config.dataset_key, now - self.config.pilot_timeout_s)
        return _html(dashboard.overview(snap, self.history))

    async def sites(self, request: web.Request) -> web.Response:
        if (refused := await self._page(request)) is not None:
            return refused
        now = time.time()
        snap = await self.store.monitoring(now, self.config.dataset_key, now - self.config.pilot_timeout_s)
        return _html(dashboard.sites_page(snap, now, self.config.client_dead_after_s))

    async def datasets(self, request: web.Request) -> web.Response:
        if (refused := await self._page(request)) is not None:
            return refused
        rows = await self.store.datasets(self.config.dataset_key)
        return _html(dashboard.datasets_page(rows, self.config.dataset_key))

    async def job(self, request: web.Request) -> web.Response:
        if (refused := await self._page(request)) is not None:
            return refused
        try:
            job_id = parse_int(request.match_info["job_id"], "job id")
        except GlideinError as exc:
            return _html(dashboard.page("No such job", f"<p>{dashboard.e(exc.message)}</p>"), status=400)
        job = await self.store.get_job(job_id)
        if job is None:
            return _html(dashboard.page("No such job", f"<p>There is no job {job_id}.</p>"), status=404)
        return _html(dashboard.job_page(job, await self.store.attempts_of(job_id)))
