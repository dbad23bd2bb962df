"""Lifecycle of a running server: open the store, serve the API, close cleanly."""

from __future__ import annotations

import logging
import ssl
import time
from types import TracebackType

from aiohttp import web

from glidein_client.schema import Role

from . import auth
from .app import Api, ServerConfig
from .files import FileStore
from .retry import RetryPolicy
from .settings import ServerSettings, StateDir
from .sqlite_store import SqliteStore
from .store import Store

log = logging.getLogger(__name__)


def open_store(state: StateDir, settings: ServerSettings) -> Store:
    s = settings
    retry = RetryPolicy(memory_factor=s.retry_memory_factor, max_memory_mb=s.retry_max_memory_mb,
                        walltime_factor=s.retry_walltime_factor, max_walltime_s=s.retry_max_walltime_s)
    return SqliteStore(str(state.database(settings)), retry=retry)


async def mint_token(store: Store, role: Role, subject: str, expires_at: float | None = None) -> str:
    """Create a token and store only its hash; the token itself is returned once."""
    token = auth.new_token()
    await store.add_token(auth.hash_token(token), role, subject, expires_at)
    return token


class Server:
    """``async with Server(state_dir) as srv`` serves until the block ends; ``srv.url`` is where."""

    def __init__(self, state_dir: str, *, host: str | None = None, port: int | None = None) -> None:
        self.state = StateDir(state_dir)
        self.settings = self.state.load()
        self._host = host or self.settings.host
        self._port = self.settings.port if port is None else port
        self.store = open_store(self.state, self.settings)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def _ssl(self) -> ssl.SSLContext | None:
        s = self.settings
        if not (s.tls_cert and s.tls_key):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.state.root / s.tls_cert), str(self.state.root / s.tls_key))
        return ctx

    async def __aenter__(self) -> Server:
        s = self.settings
        await self.store.open()
        await self.store.recover(time.time(), s.lease_s)
        files = FileStore(self.state.files(s), max_bytes=s.max_file_mb << 20)
        api = Api(self.store, files, ServerConfig(lease_s=s.lease_s, heartbeat_s=s.heartbeat_s,
                                                  pilot_timeout_s=s.pilot_timeout_s,
                                                  max_request_bytes=s.max_request_mb << 20))
        self._runner = web.AppRunner(api.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        tls = self._ssl()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=tls, backlog=512)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = s.public_url or f"{'https' if tls else 'http'}://{self._host}:{port}"
        log.info("glidein server listening on %s (state in %s)", self.url, self.state.root)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.store.close()
