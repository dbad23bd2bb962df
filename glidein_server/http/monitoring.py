"""``GET /metrics``: the Prometheus exposition, for an operator token with the ``metrics`` scope; and ``/ui``.

Mint a scrape token that can do nothing else with
``glidein-server token add --role operator --subject prometheus --scopes metrics``.
"""

from __future__ import annotations

import time

from aiohttp import web

from glidein_client.wire.schema import Role
from glidein_server.http import auth
from glidein_server.http.routing import Guard
from glidein_server.http.ui import UiApi
from glidein_server.metrics import CONTENT_TYPE, Metrics
from glidein_server.store.base import Store


def mount(app: web.Application, guard: Guard, store: Store, metrics: Metrics) -> None:
    """``GET /metrics`` and the web dashboard under ``/ui``."""
    app.router.add_get(auth.METRICS_PATH, MonitoringApi(guard, metrics).scrape)
    UiApi(guard, store, metrics.config, sample_s=metrics.config.ui_sample_s).add_to(app)


class MonitoringApi:
    def __init__(self, guard: Guard, metrics: Metrics) -> None:
        self.guard = guard
        self.metrics = metrics

    async def scrape(self, request: web.Request) -> web.Response:
        await self.guard.who(request, Role.OPERATOR)
        body = await self.metrics.render(time.time())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
