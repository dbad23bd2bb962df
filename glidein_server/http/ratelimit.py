"""A rate limit per token: token buckets, one per token (per address for requests without one).

Each role has its own rate and burst (``rate_<role>_per_s``, ``rate_<role>_burst`` in the
server's config.toml), sized so that normal work never waits: pilots sync and upload often,
site clients mint many pilots at once. A request over the limit gets 429 with a plain
message and ``Retry-After``; glidein's own clients wait that long and try again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

from glidein_client.wire.errors import AuthError
from glidein_client.wire.schema import ErrorBody, Role
from glidein_server.http.auth import Authenticator, resolved
from glidein_server.store.base import Principal

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BUCKETS = 100_000
LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class Rate:
    per_s: float  # 0: no limit
    burst: int


@dataclass(frozen=True)
class RateLimits:
    operator: Rate = Rate(50.0, 500)
    user: Rate = Rate(50.0, 500)
    site: Rate = Rate(20.0, 1000)
    pilot: Rate = Rate(100.0, 1000)
    anonymous: Rate = Rate(20.0, 200)

    def of(self, role: Role | None) -> Rate:
        return self.anonymous if role is None else getattr(self, role.value)


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimiter:
    limits: RateLimits = field(default_factory=RateLimits)
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _logged: dict[str, float] = field(default_factory=dict)

    def take(self, key: str, rate: Rate) -> float:
        """Take one request from ``key``'s bucket: 0 when allowed, else the seconds to wait."""
        if rate.per_s <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(float(rate.burst), now)
        else:
            bucket.tokens = min(float(rate.burst), bucket.tokens + (now - bucket.at) * rate.per_s)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate.per_s

    def _prune(self, now: float) -> None:
        """Forget buckets idle long enough to be full again (about a minute for every default rate)."""
        for key in [k for k, b in self._buckets.items() if now - b.at > 60.0]:
            del self._buckets[key]
        if len(self._buckets) >= MAX_BUCKETS:
            self._buckets.clear()

    def should_log(self, key: str) -> bool:
        now = self.clock()
        if now - self._logged.get(key, -math.inf) < LOG_EVERY_S:
            return False
        if len(self._logged) > 10_000:
            self._logged.clear()
        self._logged[key] = now
        return True


def middleware(limiter: RateLimiter, auth: Authenticator) -> Middleware:
    """The aiohttp middleware: resolve the token (the handler reuses it) and charge its bucket."""

    @web.middleware
    async def rate_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        principal: Principal | None = None
        role: Role | None = None
        key = f"address {request.remote}"
        who = "requests without a valid token from this address"
        if header:
            try:
                principal = await auth.principal(header)
            except AuthError:
                pass  # the handler answers with the reason
            else:
                role = principal.role
                key = f"token {principal.token_id}"
                who = f"this {role.value} token"
        rate = limiter.limits.of(role)
        wait_s = limiter.take(key, rate)
        if wait_s <= 0:
            if principal is None:
                return await handler(request)
            token = resolved.set((request, principal))  # the handler's _who reuses it
            try:
                return await handler(request)
            finally:
                resolved.reset(token)
        retry_after = max(1, math.ceil(wait_s))
        if limiter.should_log(key):
            subject = principal.subject if principal else request.remote
            log.warning(
                "rate limit: %s (%s) went over %.0f requests/s (burst %d); refusing for %d s",
                key,
                subject,
                rate.per_s,
                rate.burst,
                retry_after,
            )
        body = ErrorBody(
            error=f"Too many requests from {who}: the limit is {rate.per_s:g} per second (bursts of {rate.burst}).",
            hint=f"Wait {retry_after} s and try again; glidein's own tools do that by themselves.",
        )
        return web.Response(
            body=msgspec.json.encode(body),
            status=429,
            content_type="application/json",
            headers={"Retry-After": str(retry_after)},
        )

    return rate_limit
