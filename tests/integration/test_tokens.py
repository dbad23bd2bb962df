"""Tokens, operator actions and limits over real HTTP.

Tokens carry a role, a subject, scopes and an expiry; revocation takes effect at once; pilot
tokens live for the queue wait plus the walltime and are renewed by heartbeats; operator
actions need a fresh one-time code; a token over its rate gets 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import aiohttp
import pytest

import glidein_client.wire.api as client_api
from glidein_client.wire.errors import AuthError, ForbiddenError, NotFoundError, RateLimited, ValidationError
from glidein_client.wire.schema import (
    JobSpec,
    PilotRegister,
    PilotShape,
    Resources,
    Role,
    Scope,
    SyncRequest,
    TokenRequest,
)
from glidein_server import cli
from glidein_server.http import auth
from glidein_server.http.ratelimit import Rate, RateLimits
from glidein_server.server import mint_token

from ..conftest import LiveServer

SHAPE = PilotShape(cpus=2, memory_mb=2000, disk_mb=1000, walltime_s=3600)
FREE = Resources(cpus=2, memory_mb=2000, disk_mb=1000)


async def test_revoking_over_the_api_takes_effect_at_once(live_server: LiveServer) -> None:
    code = await live_server.enable_totp()
    async with live_server.api(live_server.operator_token) as op:
        alice = await op.admin_add(Role.USER, "alice", code())
        site = await op.admin_add(Role.SITE, "a", code())
        async with live_server.api(alice.token) as api, live_server.api(site.token) as site_api:
            await api.submit([JobSpec(argv=["true"])])  # the token is cached by the server now
            await site_api.demand("a", SHAPE)
            grant = await site_api.new_pilot("a")
            async with live_server.api(grant.token) as pilot:
                await pilot.register(PilotRegister(resources=FREE, end_time=time.time() + 3600))
                assert await op.admin_revoke(Role.USER, "alice", code()) == 1
                with pytest.raises(AuthError, match="unknown or revoked"):
                    await api.list_jobs()
                # A revoked site loses its own tokens and those of its pilots.
                assert await op.admin_revoke(Role.SITE, "a", code()) == 2
                with pytest.raises(AuthError):
                    await site_api.demand("a", SHAPE)
                with pytest.raises(AuthError):
                    await pilot.sync(SyncRequest(free=FREE, lifetime_s=3000))
        listed = await op.admin_tokens(code(), subject="alice")
        assert listed.tokens == []  # revoked ones are listed on request only
        extra = await op.admin_mint(TokenRequest(role=Role.USER, subject="bob", expires_in_s=600), code())
        assert await op.admin_revoke_token(extra.id, code()) == 1
        with pytest.raises(NotFoundError):
            await op.admin_revoke_token(extra.id, code())
    async with live_server.api(extra.token) as api:
        with pytest.raises(AuthError):
            await api.summary()


async def test_local_revocation_reaches_a_running_server_within_the_cache_time(live_server: LiveServer) -> None:
    token = await live_server.token(Role.USER, "alice")
    async with live_server.api(token) as api:
        await api.summary()
        code = await cli._dispatch(
            cli._parser().parse_args(
                ["--dir", str(live_server.state_dir), "token", "revoke", auth.hash_token(token)[:16]]
            )
        )
        assert code == 0
        await asyncio.sleep(auth.REVOKED_SEEN_S)  # another process revoked it: the server's caches must age
        with pytest.raises(AuthError, match="revoked"):
            await api.summary()


async def test_expired_tokens_are_refused_with_when(live_server: LiveServer) -> None:
    token = await mint_token(live_server.server.store, Role.USER, "alice", expires_at=time.time() - 5)
    async with live_server.api(token) as api:
        with pytest.raises(AuthError, match="expired at"):
            await api.summary()


async def test_scopes_limit_a_token_within_its_role(live_server: LiveServer) -> None:
    store = live_server.server.store
    reader = await mint_token(store, Role.USER, "alice", scopes=[Scope.READ])
    async with live_server.api(reader) as api:
        assert (await api.list_jobs()).jobs == []
        with pytest.raises(ForbiddenError, match="may not write"):
            await api.submit([JobSpec(argv=["true"])])
    plain_op = await mint_token(store, Role.OPERATOR, "operator", scopes=[Scope.READ, Scope.WRITE])
    code = await live_server.enable_totp()
    async with live_server.api(plain_op) as op:
        with pytest.raises(ForbiddenError, match="may not admin"):
            await op.admin_add(Role.USER, "eve", code())
    async with live_server.api(live_server.operator_token) as op:
        with pytest.raises(ValidationError, match="cannot have the scope admin"):
            await op.admin_mint(TokenRequest(role=Role.USER, subject="eve", scopes=[Scope.ADMIN]), code())
        with pytest.raises(ValidationError, match="minted per pilot"):
            await op.admin_mint(TokenRequest(role=Role.PILOT, subject="1"), code())


async def test_pilot_tokens_cover_the_queue_wait_and_walltime_and_heartbeats_renew_them(
    live_server: LiveServer,
) -> None:
    api_server = live_server.server.api
    assert api_server is not None
    grace = api_server.config.pilot_token_grace_s
    site_token = await live_server.token(Role.SITE, "a")
    async with live_server.api(site_token) as site:
        await site.demand("a", SHAPE)
        now = time.time()
        grant = await site.new_pilot("a", walltime_s=3600, max_queued_s=2 * 86400)
        assert grant.expires_at == pytest.approx(now + 2 * 86400 + 3600 + grace, abs=5)
        forever = await site.new_pilot("a", walltime_s=3600, max_queued_s=0)  # no queue limit: the longest life
        assert forever.expires_at == pytest.approx(now + api_server.config.pilot_token_max_s + grace, abs=5)
        short = await site.new_pilot("a", walltime_s=60, max_queued_s=60)  # the client says little ...
    async with live_server.api(short.token) as pilot:
        # ... but the pilot queued long and got a long allocation: registering renews its token.
        await pilot.register(PilotRegister(resources=FREE, end_time=time.time() + 5 * 86400))
        await pilot.sync(SyncRequest(free=FREE, lifetime_s=5 * 86400))
    tokens = await live_server.server.store.list_tokens(Role.PILOT, str(short.pilot_id))
    assert tokens[0].expires_at == pytest.approx(time.time() + 5 * 86400 + grace, abs=10)


async def test_totp_codes_are_needed_checked_and_used_once(live_server: LiveServer) -> None:
    code = await live_server.enable_totp()
    async with live_server.api(live_server.operator_token) as op:
        with pytest.raises(AuthError, match="needs a one-time code"):
            await op.admin_add(Role.USER, "alice", "")
        with pytest.raises(AuthError, match="wrong or expired"):
            await op.admin_add(Role.USER, "alice", "000000")
        used = code()
        await op.admin_add(Role.USER, "alice", used)
        with pytest.raises(AuthError, match="already used"):
            await op.admin_add(Role.USER, "bob", used)
        for _ in range(5):  # five wrong codes in a row: a pause
            with pytest.raises(AuthError, match="wrong"):
                await op.admin_add(Role.USER, "bob", "123456" if used != "123456" else "654321")
        with pytest.raises(AuthError, match="Too many wrong"):
            await op.admin_add(Role.USER, "bob", code())
    user = await live_server.token(Role.USER, "alice")
    async with live_server.api(user) as api:
        with pytest.raises(ForbiddenError):
            await api.admin_add(Role.USER, "mallory", code())


async def test_totp_secrets_are_encrypted_at_rest(live_server: LiveServer) -> None:
    await live_server.enable_totp()
    await live_server.server.store.close()  # flush the WAL into the database file
    db = sqlite3.connect(live_server.state_dir / "glidein.db")
    (stored,) = db.execute("SELECT secret FROM totp WHERE subject = 'operator'").fetchone()
    db.close()
    await live_server.server.store.open()
    assert bytes(stored).startswith(b"gAAAAA")  # a Fernet token, not the base32 secret
    assert b"otpauth" not in (live_server.state_dir / "glidein.db").read_bytes()


async def test_rate_limit_answers_429_with_retry_after_and_the_client_waits(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    api_server = live_server.server.api
    assert api_server is not None
    api_server.limiter.limits = RateLimits(user=Rate(per_s=5.0, burst=3))
    user = await live_server.token(Role.USER, "alice")
    statuses = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {user}"}) as s:
        for _ in range(5):
            async with s.get(f"{live_server.url}/api/v1/summary") as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert resp.headers["Retry-After"] == "1"
                    body = json.loads(await resp.read())
                    assert "Too many requests from this user token" in body["error"] and "Wait 1 s" in body["hint"]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    started = time.monotonic()
    async with live_server.api(user) as api:  # glidein's client waits as told and succeeds
        for _ in range(4):
            await api.summary()
    assert time.monotonic() - started >= 0.5
    other = await live_server.token(Role.USER, "bob")  # the limit is per token
    async with live_server.api(other) as api:
        await api.summary()
    api_server.limiter.limits = RateLimits(user=Rate(per_s=0.01, burst=1))
    monkeypatch.setattr(client_api, "RATE_LIMIT_RETRIES", 0)  # a client that does not wait: a plain error
    async with live_server.api(other) as api:
        await api.summary()
        with pytest.raises(RateLimited, match="Too many requests"):
            await api.summary()
