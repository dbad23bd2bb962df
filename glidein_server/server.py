"""Lifecycle of a running server: open the store, serve the API, close cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import ssl
import time
from collections.abc import Sequence
from types import TracebackType

from aiohttp import web

from glidein_client.wire.errors import ConfigError
from glidein_client.wire.schema import Role, Scope
from glidein_server import tls, totp
from glidein_server.http import auth
from glidein_server.http.app import Api, ServerConfig
from glidein_server.http.ratelimit import Rate, RateLimits
from glidein_server.metrics import MetricsConfig
from glidein_server.policy.fairshare import Shares
from glidein_server.policy.reservation import ReservationPolicy
from glidein_server.policy.retry import RetryPolicy
from glidein_server.retention import purge_forever
from glidein_server.settings import ServerSettings, StateDir
from glidein_server.store.base import Store
from glidein_server.store.files import FileStore
from glidein_server.store.postgres import PostgresStore, is_postgres_url
from glidein_server.store.sqlite import SqliteStore

log = logging.getLogger(__name__)


def open_store(state: StateDir, settings: ServerSettings) -> Store:
    s = settings
    retry = RetryPolicy(
        memory_factor=s.retry_memory_factor,
        max_memory_mb=s.retry_max_memory_mb,
        walltime_factor=s.retry_walltime_factor,
        max_walltime_s=s.retry_max_walltime_s,
    )
    shares = Shares(per_user=dict(s.shares), default=s.default_share)
    reserve = None  # 0 for either setting: no reservations
    if s.reservation_after_s > 0 and s.reservation_max_hold_s > 0:
        reserve = ReservationPolicy(
            after_s=s.reservation_after_s,
            max_hold_s=s.reservation_max_hold_s,
            max_per_owner=s.reservation_per_owner,
        )
    if is_postgres_url(settings.database):
        return PostgresStore(settings.database, retry=retry, shares=shares, reservation=reserve)
    path = str(state.database(settings))
    return SqliteStore(path, retry=retry, shares=shares, monitoring=s.metrics, reservation=reserve)


async def mint_token(
    store: Store, role: Role, subject: str, expires_at: float | None = None, scopes: Sequence[Scope] | None = None
) -> str:
    """Create a token and store only its hash; the token itself is returned once."""
    token = auth.new_token()
    await store.add_token(auth.hash_token(token), role, subject, expires_at, scopes)
    return token


def rate_limits(s: ServerSettings) -> RateLimits:
    return RateLimits(
        operator=Rate(s.rate_operator_per_s, s.rate_operator_burst),
        user=Rate(s.rate_user_per_s, s.rate_user_burst),
        site=Rate(s.rate_site_per_s, s.rate_site_burst),
        pilot=Rate(s.rate_pilot_per_s, s.rate_pilot_burst),
        anonymous=Rate(s.rate_anonymous_per_s, s.rate_anonymous_burst),
    )


class Server:
    """``async with Server(state_dir) as srv`` serves until the block ends; ``srv.url`` is where."""

    def __init__(self, state_dir: str, *, host: str | None = None, port: int | None = None) -> None:
        self.state = StateDir(state_dir)
        self.settings = self.state.load()
        self._host = host or self.settings.host
        self._port = self.settings.port if port is None else port
        self.store = open_store(self.state, self.settings)
        self._runner: web.AppRunner | None = None
        self._retention: asyncio.Task[None] | None = None
        self.api: Api | None = None
        self.url = ""
        self.listen = ""  # host:port actually bound

    def _ssl(self) -> ssl.SSLContext | None:
        """The TLS context; plain HTTP only when the config says so, and then on loopback unless forced."""
        s = self.settings
        if s.tls_cert and s.tls_key:
            return tls.server_context(self.state.root / s.tls_cert, self.state.root / s.tls_key)
        if not s.insecure_http:
            raise ConfigError(
                f"The server in {self.state.root} has no TLS certificate (tls_cert and tls_key in config.toml).",
                hint="Make one with `glidein-server tls renew`, or set insecure_http = true in config.toml to "
                "serve plain HTTP on this host's loopback address only.",
            )
        if not tls.is_loopback(self._host) and not s.insecure_http_any_host:
            raise ConfigError(
                f"Plain HTTP is served on loopback addresses only, not on {self._host}: tokens would travel in "
                "clear text.",
                hint="Turn TLS on (`glidein-server tls renew`), or set insecure_http_any_host = true in "
                "config.toml if a TLS proxy in front of the server handles the network.",
            )
        log.warning("serving plain HTTP without TLS on %s: tokens and data travel unencrypted", self._host)
        return None

    async def __aenter__(self) -> Server:
        s = self.settings
        tls_context = self._ssl()
        key = totp.load_key(self.state.root / s.totp_key_file)
        await self.store.open()
        await self.store.recover(time.time(), s.lease_s)
        files = FileStore(self.state.files(s), max_bytes=s.max_file_mb << 20)
        api = Api(
            self.store,
            files,
            ServerConfig(
                lease_s=s.lease_s,
                heartbeat_s=s.heartbeat_s,
                pilot_timeout_s=s.pilot_timeout_s,
                max_request_bytes=s.max_request_mb << 20,
                rate_limits=rate_limits(s),
                totp_key=key,
                pilot_token_grace_s=s.pilot_token_grace_s,
                pilot_token_max_s=s.pilot_token_max_s,
                public_url=s.public_url,
                metrics=MetricsConfig(
                    dataset_key=s.dataset_label,
                    client_dead_after_s=s.client_dead_after_s,
                    pilot_timeout_s=s.pilot_timeout_s,
                    ui_sample_s=s.dashboard_sample_s,
                )
                if s.metrics
                else None,
            ),
        )
        self.api = api
        self.store.watch(api.guard.new_work)  # other replicas' new work wakes this one's pilots
        self._runner = web.AppRunner(api.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=tls_context, backlog=512)
        try:
            await site.start()
        except OSError as exc:
            await self.__aexit__(None, None, None)
            raise ConfigError(
                f"Cannot listen on {self._host}:{self._port}: {os.strerror(exc.errno).lower() if exc.errno else exc}.",
                hint=_listen_hint(exc.errno),
                address=f"{self._host}:{self._port}",
            ) from None
        port = self._runner.addresses[0][1]
        self.listen = f"{self._host}:{port}"
        self.url = s.public_url or f"{'https' if tls_context else 'http'}://{self._host}:{port}"
        log.info("glidein server listening on %s, clients use %s (state in %s)", self.listen, self.url, self.state.root)
        if s.retention_days > 0:
            self._retention = asyncio.create_task(
                purge_forever(self.store, files, s.retention_days, s.retention_interval_s), name="retention"
            )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
            self._retention = None
        if self._runner is not None:
            await self._runner.cleanup()
        await self.store.close()


def _listen_hint(errno_: int | None) -> str:
    """What to do when the listening socket cannot be had."""
    if errno_ == errno.EACCES:
        return (
            "Ports below 1024 need root: choose one above it with `glidein-server serve --port N` or port in "
            "config.toml."
        )
    if errno_ == errno.EADDRNOTAVAIL:
        return (
            "That address is not one of this host's: use one it has (`ip -br addr`), 0.0.0.0 for all of them, "
            "or 127.0.0.1, with `glidein-server serve --host` or host in config.toml."
        )
    return (
        "Another program (perhaps another glidein server) holds that port: stop it, or choose "
        "another one with `glidein-server serve --port N` or port in config.toml."
    )
