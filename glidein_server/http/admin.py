"""Operator actions over the API (``/api/v1/admin/...``): add and revoke users, sites and tokens;
drain, pause, reopen and cap sites. ``glidein-server admin`` calls them from the command line.

Every one needs an operator token with the admin scope and a fresh one-time code (TOTP) in
the ``X-Glidein-TOTP`` header. New tokens are shown once, in the answer; the server keeps
only their hashes. Revocations take effect at once.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from glidein_client.wire.codec import convert, decode
from glidein_client.wire.errors import ConflictError, NotFoundError, ValidationError
from glidein_client.wire.schema import (
    ROLE_SCOPES,
    Name,
    NewSubject,
    Revoked,
    Role,
    Scope,
    SiteCapRequest,
    SiteModeRequest,
    SiteView,
    TokenGrant,
    TokenList,
    TokenRequest,
)
from glidein_server.http import auth
from glidein_server.http.routing import Guard, Route, json_response
from glidein_server.store.base import Principal, Store
from glidein_server.totp import HEADER, TotpGuard

log = logging.getLogger(__name__)


async def mint(
    store: Store, role: Role, subject: str, *, expires_at: float | None = None, scopes: list[Scope] | None = None
) -> TokenGrant:
    """Create a token and store only its hash; the token itself is in the answer, once."""
    token = auth.new_token()
    token_id = await store.add_token(auth.hash_token(token), role, subject, expires_at, scopes)
    allowed = ROLE_SCOPES[role]
    return TokenGrant(
        id=token_id,
        token=token,
        role=role,
        subject=subject,
        scopes=[s for s in allowed if scopes is None or s in scopes],
        expires_at=expires_at,
    )


class AdminApi:
    """Handlers of the operator routes; the route table of :class:`~glidein_server.http.app.Api` lists them."""

    def __init__(self, guard: Guard, store: Store, totp_key: bytes | None) -> None:
        self.guard = guard
        self.store = store
        self.totp = TotpGuard(store, totp_key)

    def routes(self) -> list[Route]:
        OP = (Role.OPERATOR,)
        return [
            Route(
                "POST",
                "/admin/users",
                self.add_user,
                "Add a user: mint its first token (shown once).",
                OP,
                NewSubject,
                TokenGrant,
            ),
            Route(
                "DELETE", "/admin/users/{name}", self.revoke_user, "Revoke every token of a user.", OP, None, Revoked
            ),
            Route(
                "POST",
                "/admin/sites",
                self.add_site,
                "Add a site: mint its first token (shown once).",
                OP,
                NewSubject,
                TokenGrant,
            ),
            Route(
                "DELETE",
                "/admin/sites/{name}",
                self.revoke_site,
                "Revoke every token of a site and of its pilots.",
                OP,
                None,
                Revoked,
            ),
            Route(
                "POST",
                "/admin/sites/{name}/mode",
                self.site_mode,
                "Drain, pause or reopen a site (mode draining, paused or open).",
                OP,
                SiteModeRequest,
                SiteView,
            ),
            Route(
                "POST",
                "/admin/sites/{name}/cap",
                self.site_cap,
                "Let a site's jobs hold at most max_cpus cores at once (null: no cap).",
                OP,
                SiteCapRequest,
                SiteView,
            ),
            Route(
                "POST",
                "/admin/tokens",
                self.add_token,
                "Mint a token with a role, subject, scopes and expiry.",
                OP,
                TokenRequest,
                TokenGrant,
            ),
            Route(
                "GET",
                "/admin/tokens",
                self.list_tokens,
                "List tokens (never the tokens themselves); filters: role, subject, revoked=1.",
                OP,
                None,
                TokenList,
            ),
            Route(
                "DELETE",
                "/admin/tokens/{token_id}",
                self.revoke_token,
                "Revoke one token by its id.",
                OP,
                None,
                Revoked,
            ),
        ]

    async def _operator(self, request: web.Request) -> Principal:
        principal = await self.guard.who(request, Role.OPERATOR)
        await self.totp.check(principal.subject, request.headers.get(HEADER))
        return principal

    async def _revoked(self, by: Principal, ids: list[str], what: str) -> web.Response:
        self.guard.auth.forget(ids)
        log.info("operator %s revoked %d token(s) of %s", by.subject, len(ids), what)
        return json_response(Revoked(revoked=len(ids)))

    async def _add(self, request: web.Request, role: Role) -> web.Response:
        by = await self._operator(request)
        body: NewSubject = decode(await request.read(), NewSubject, what=f"new {role.value}")
        now = time.time()
        if not body.another:
            active = [
                t.id
                for t in await self.store.list_tokens(role, body.name, revoked=False)
                if not t.revoked_at and not (t.expires_at and t.expires_at < now)
            ]
            if active:
                raise ConflictError(
                    f"The {role.value} {body.name!r} already has an active token ({', '.join(active)}).",
                    hint="Use that one; or ask for another (another: true); or revoke it first.",
                    field="name",
                )
        expires = now + body.expires_in_s if body.expires_in_s else None
        grant = await mint(self.store, role, body.name, expires_at=expires)
        log.info("operator %s added %s %s (token %s)", by.subject, role.value, body.name, grant.id)
        return json_response(grant, status=201)

    async def add_user(self, request: web.Request) -> web.Response:
        return await self._add(request, Role.USER)

    async def add_site(self, request: web.Request) -> web.Response:
        return await self._add(request, Role.SITE)

    async def revoke_user(self, request: web.Request) -> web.Response:
        by = await self._operator(request)
        name = _name(request.match_info["name"])
        ids = await self.store.revoke_subject(Role.USER, name, time.time())
        return await self._revoked(by, ids, f"user {name}")

    async def revoke_site(self, request: web.Request) -> web.Response:
        by = await self._operator(request)
        name = _name(request.match_info["name"])
        ids = await self.store.revoke_subject(Role.SITE, name, time.time())
        return await self._revoked(by, ids, f"site {name} and its pilots")

    async def site_mode(self, request: web.Request) -> web.Response:
        by = await self._operator(request)
        name = _name(request.match_info["name"])
        body: SiteModeRequest = decode(await request.read(), SiteModeRequest, what="site mode")
        await self.store.set_site_mode(name, body.mode)
        log.info("operator %s set site %s to %s", by.subject, name, body.mode.value)
        return json_response(await self._site(name))

    async def site_cap(self, request: web.Request) -> web.Response:
        by = await self._operator(request)
        name = _name(request.match_info["name"])
        body: SiteCapRequest = decode(await request.read(), SiteCapRequest, what="site cap")
        await self.store.set_site_cap(name, body.max_cpus)
        log.info("operator %s capped site %s at %s cores", by.subject, name, body.max_cpus or "no")
        return json_response(await self._site(name))

    async def _site(self, name: str) -> SiteView:
        summary = await self.store.summary(None)
        return next((s for s in summary.sites if s.name == name), SiteView(name=name))

    async def add_token(self, request: web.Request) -> web.Response:
        by = await self._operator(request)
        body: TokenRequest = decode(await request.read(), TokenRequest, what="token request")
        if body.role is Role.PILOT:
            raise ValidationError(
                "Pilot tokens are minted per pilot by their site's client.",
                hint="Mint a site token instead.",
                field="role",
            )
        extra = set(body.scopes or ()) - set(ROLE_SCOPES[body.role])
        if extra:
            raise ValidationError(
                f"A {body.role.value} token cannot have the scope {', '.join(sorted(s.value for s in extra))}.",
                field="scopes",
            )
        expires = time.time() + body.expires_in_s if body.expires_in_s else None
        grant = await mint(self.store, body.role, body.subject, expires_at=expires, scopes=body.scopes)
        log.info(
            "operator %s minted a %s token %s for %s (scopes %s)",
            by.subject,
            body.role.value,
            grant.id,
            body.subject,
            " ".join(s.value for s in grant.scopes),
        )
        return json_response(grant, status=201)

    async def list_tokens(self, request: web.Request) -> web.Response:
        await self._operator(request)
        q = request.query
        role = None
        if q.get("role"):
            try:
                role = Role(q["role"])
            except ValueError:
                raise ValidationError(
                    f"role: {q['role']!r} is not one of {', '.join(r.value for r in Role)}.", field="role"
                ) from None
        subject = _name(q["subject"]) if q.get("subject") else None
        tokens = await self.store.list_tokens(role, subject, revoked=q.get("revoked") in ("1", "true"))
        return json_response(TokenList(tokens=tokens))

    async def revoke_token(self, request: web.Request) -> web.Response:
        by = await self._operator(request)
        token_id = request.match_info["token_id"]
        ids = await self.store.revoke_token(token_id, time.time())
        if not ids:
            raise NotFoundError(
                f"No token with id {token_id!r} is active.",
                hint="GET /api/v1/admin/tokens lists the tokens and their ids.",
            )
        return await self._revoked(by, ids, f"token {token_id}")


def _name(text: str) -> str:
    return convert(text, Name, what="name")
