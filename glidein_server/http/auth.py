"""Tokens: random, stored only as hashes, each with a role, a subject, scopes and an expiry."""

from __future__ import annotations

import contextvars
import hashlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import replace

from glidein_client.wire.errors import AuthError, ForbiddenError
from glidein_client.wire.schema import Role, Scope
from glidein_server.store.base import Principal, Store

CACHE_S = 1.0
#: A revocation made by another process is honoured within this many seconds.
REVOKED_SEEN_S = 2 * CACHE_S
ADMIN_PREFIX = "/api/v1/admin/"
METRICS_PATH = "/metrics"
#: The principal the rate-limit middleware resolved for the request its task is serving.
resolved: contextvars.ContextVar[tuple[object, Principal] | None] = contextvars.ContextVar("principal", default=None)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def scope_of(method: str, path: str) -> Scope:
    """The scope a request needs: admin for operator actions, metrics for a scrape, read for GET, write for the rest."""
    if path.startswith(ADMIN_PREFIX):
        return Scope.ADMIN
    if path == METRICS_PATH:
        return Scope.METRICS
    return Scope.READ if method in ("GET", "HEAD") else Scope.WRITE


class Authenticator:
    """Resolves bearer tokens to principals, with a short cache for the pilots' hot path.

    Revocations made through this server drop their cache entries at once (:meth:`forget`);
    a revocation made by another process (``glidein-server token revoke``, another replica) is
    seen within ``REVOKED_SEEN_S`` seconds: this cache's ``CACHE_S``, plus as long again for a
    store that keeps found tokens in memory itself (SQLite; PostgreSQL, whose replicas tell each other).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._digests: dict[str, str] = {}  # token id -> the digest it is cached under

    async def principal(self, header: str | None) -> Principal:
        if not header or not header.startswith("Bearer "):
            raise AuthError(
                "This request needs a token.",
                hint="Send 'Authorization: Bearer <token>'; set GLIDEIN_TOKEN or token_file in your config.",
            )
        digest = hash_token(header[7:].strip())
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit and now - hit[0] < CACHE_S:
            principal = hit[1]
        else:
            found = await self._store.lookup_token(digest, time.time())
            if found is None:
                self._cache.pop(digest, None)
                raise AuthError(
                    "The token is not valid (unknown or revoked).",
                    hint="Ask the operator for a new token.",
                )
            principal = found
            if len(self._cache) > 10_000:
                self._cache.clear()
                self._digests.clear()
            self._cache[digest] = (now, principal)
            self._digests[principal.token_id] = digest
        if principal.expires_at is not None and principal.expires_at < time.time():
            self._cache.pop(digest, None)
            when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(principal.expires_at))
            raise AuthError(
                f"The token expired at {when}.",
                hint="Ask the operator for a new token (a pilot's site client mints a new pilot).",
            )
        return principal

    def forget(self, token_ids: Iterable[str] | None = None) -> None:
        """Drop cached principals: those of ``token_ids`` (revoked), or all of them."""
        if token_ids is None:
            self._cache.clear()
            self._digests.clear()
            return
        for token_id in token_ids:
            self._cache.pop(self._digests.pop(token_id, ""), None)

    def renewed(self, token_id: str, expires_at: float) -> None:
        """Keep the cached principal of a renewed token in step with the store."""
        digest = self._digests.get(token_id, "")
        hit = self._cache.get(digest)
        if hit is not None:
            self._cache[digest] = (hit[0], replace(hit[1], expires_at=expires_at))


def require(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise ForbiddenError(f"A {principal.role.value} token cannot do this; it needs a {allowed} token.")


def require_scope(principal: Principal, scope: Scope) -> None:
    if scope not in principal.scopes:
        have = ", ".join(sorted(s.value for s in principal.scopes)) or "none"
        raise ForbiddenError(
            f"This token may not {scope.value} here (its scopes: {have}).",
            hint=f"Use a token with the {scope.value!r} scope; the operator mints one.",
        )


def require_site(principal: Principal, site: str) -> None:
    if principal.role is Role.OPERATOR:
        return
    require(principal, Role.SITE)
    if principal.subject != site:
        raise ForbiddenError(f"This site token belongs to site {principal.subject!r}, not {site!r}.")
