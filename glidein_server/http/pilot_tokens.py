"""Pilot tokens' lifetimes: minted for the pilot's queue wait plus walltime, renewed by its heartbeats."""

from __future__ import annotations

import time

from glidein_client.wire.schema import PilotGrantRequest
from glidein_server.http.auth import Authenticator
from glidein_server.store.base import Principal, Store


class PilotTokens:
    def __init__(self, store: Store, auth: Authenticator, *, grace_s: float, max_s: float) -> None:
        self.store, self.auth = store, auth
        self.grace_s, self.max_s = grace_s, max_s  # past the pilot's end; the longest life of a token

    async def life_s(self, site: str, grant: PilotGrantRequest) -> float:
        """A pilot token lives for the pilot's queue wait plus its walltime, plus a grace period."""
        walltime_s = grant.walltime_s
        if walltime_s is None:
            shape = (await self.store.site_shapes()).get(site)
            walltime_s = shape.walltime_s if shape else 86400
        queued_s = 86400 if grant.max_queued_s is None else grant.max_queued_s or self.max_s
        return min(queued_s + walltime_s, self.max_s) + self.grace_s

    async def renew(self, principal: Principal, lifetime_s: float) -> None:
        """A running pilot's heartbeat keeps its token valid until its end (plus the grace period)."""
        if principal.expires_at is None:
            return
        grace = self.grace_s
        now = time.time()
        want = now + min(max(lifetime_s, 0.0), self.max_s) + grace
        if principal.expires_at < want - grace / 2:  # renew rarely: not on every heartbeat
            await self.store.renew_token(principal.token_id, want)
            self.auth.renewed(principal.token_id, want)
