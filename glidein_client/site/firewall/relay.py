"""The login-node relay of a ``network = "relay"`` site: pilots that reach only the login node reach the server.

The site client runs it at ``[relay] address:port``. It forwards the pilot API (register,
sync, exit and the health check) to the server with the calling pilot's own token, and
refuses any token that this client did not mint for one of its own pilots: it cannot act
for another pilot, another site, a user or an operator, and it adds no credential of its
own. One route is its own: ``POST /api/v1/pilot/staged-outputs``, by which a pilot asks
the client to upload an output it wrote into the staging area (with the pilot's token and
the attempt's lease). Everything else is refused.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from aiohttp import web

from glidein_client.site.firewall.forwarder import PilotForwarder, PilotTokens, error_body
from glidein_client.wire.api import API
from glidein_client.wire.errors import ConfigError
from glidein_client.wire.staging import StagedOutput

log = logging.getLogger(__name__)
STAGED_OUTPUTS = f"{API}/pilot/staged-outputs"
MAX_BODY = 16 << 20


class Relay:
    """Serves the pilots of one site. Use as ``async with Relay(...)``; :attr:`url` is where it listens."""

    def __init__(self, site: str, address: str, port: int, tokens: PilotTokens, forwarder: PilotForwarder) -> None:
        self.site = site
        self.address = address
        self.port = port
        self.tokens = tokens
        self.forwarder = forwarder
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Relay:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.address, self.port, backlog=512).start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(
                f"The relay cannot listen on {self.address}:{self.port}: {exc.strerror or exc}.",
                hint="Check [relay] address (an address of this login node that the worker nodes reach) and "
                "port (free, and allowed from the worker nodes).",
            ) from None
        port = self._runner.addresses[0][1]
        host = f"[{self.address}]" if ":" in self.address else self.address
        self.url = f"http://{host}:{port}"
        log.info("site %s: relay for pilots listening on %s", self.site, self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.startswith("Bearer ") else ""
        pilot_id = await asyncio.to_thread(self.tokens.pilot_of, token) if token else None
        if pilot_id is None:
            return _reply(
                *error_body(
                    401,
                    f"This relay serves only the pilots that the site client of {self.site} started.",
                    "Pilots get their token from the site client; users and sites talk to the server itself.",
                )
            )
        if request.method == "POST" and path == STAGED_OUTPUTS:
            try:
                out = msgspec.json.decode(await request.read(), type=StagedOutput)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return _reply(*error_body(400, f"The staged output request is invalid: {exc}."))
            return _reply(*await self.forwarder.upload_staged(token, out))
        if not path.startswith(API + "/"):
            return _reply(*error_body(404, f"{request.method} {path} is not part of the pilot API."))
        body = await request.read() if request.can_read_body else None
        return _reply(*await self.forwarder.forward(token, request.method, path[len(API) :], body))


def _reply(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json")
