"""Tokens: random, stored only as hashes, each with a role and a subject."""

from __future__ import annotations

import hashlib
import secrets
import time

from glidein_client.errors import AuthError, ForbiddenError
from glidein_client.schema import Role

from .store import Principal, Store

CACHE_S = 2.0


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    """Resolves bearer tokens to principals, with a short cache for the pilots' hot path."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[str, tuple[float, Principal]] = {}

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
            return hit[1]
        principal = await self._store.lookup_token(digest, time.time())
        if principal is None:
            self._cache.pop(digest, None)
            raise AuthError(
                "The token is not valid (unknown, revoked or expired).",
                hint="Ask the operator for a new token.",
            )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, principal)
        return principal

    def forget(self) -> None:
        self._cache.clear()


def require(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise ForbiddenError(f"A {principal.role.value} token cannot do this; it needs a {allowed} token.")


def require_site(principal: Principal, site: str) -> None:
    if principal.role is Role.OPERATOR:
        return
    require(principal, Role.SITE)
    if principal.subject != site:
        raise ForbiddenError(f"This site token belongs to site {principal.subject!r}, not {site!r}.")
