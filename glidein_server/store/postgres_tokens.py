"""Tokens and TOTP secrets in the PostgreSQL store: hashes only, scopes within the role, revocation."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from glidein_client.wire.schema import Role, Scope, TokenInfo
from glidein_server.store.base import Principal, stored_scopes
from glidein_server.store.postgres_base import TOKENS_CHANNEL, Connection, PostgresBase, Q

#: A token kept in memory is trusted while every change to the tokens table committed more than
#: this long ago has been heard (so another replica's revocation is honoured within it).
FRESH_S = 1.0
MAX_CACHED = 100_000


class PostgresTokens(PostgresBase):
    """Tokens, with the valid ones found kept in memory by each replica: a pilot's heartbeat does
    not ask the database who it is. This store's own revocations and renewals update that memory at
    once; any other change to a token (another replica's or a ``glidein-server`` command's
    revocation, renewal or purge) makes a trigger ``NOTIFY glidein_tokens`` with the token's public
    id, which every listening replica hears and forgets. A token is taken from memory only while
    the replica's listening connection has proved, within the last ``FRESH_S`` seconds, that it heard
    everything committed before (see postgres_listener): a revocation anywhere is honoured by every
    replica within ``FRESH_S``; without a working listener every lookup reads the database."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._tokens: dict[str, Principal] = {}  # by hash: tokens found valid (expired too: the caller says so)
        self._token_hashes: dict[str, str] = {}  # token id -> hash, for the tokens in _tokens
        self._token_epoch = 0  # counts what made memory forget: a lookup in flight meanwhile keeps nothing

    def _channels(self) -> dict[str, Callable[[str], None]]:
        return {**super()._channels(), TOKENS_CHANNEL: self._token_changed}

    def _missed(self) -> None:
        super()._missed()
        self._forget_tokens(None)

    def _token_changed(self, token_id: str) -> None:
        self._forget_tokens([token_id])

    def _forget_tokens(self, token_ids: Sequence[str] | None) -> None:
        """Forget the tokens of ``token_ids``, or all."""
        self._token_epoch += 1
        if token_ids is None:
            self._tokens, self._token_hashes = {}, {}
            return
        for token_id in token_ids:
            self._tokens.pop(self._token_hashes.pop(token_id, ""), None)

    async def add_token(
        self, token_hash: str, role: Role, subject: str, expires_at: float | None, scopes: Sequence[Scope] | None = None
    ) -> str:
        token_id = token_hash[:16]
        text = " ".join(sorted({s.value for s in scopes})) if scopes else ""
        await self.pool.execute(
            Q["token_insert"], token_hash, role.value, subject, time.time(), expires_at, token_id, text
        )
        return token_id

    async def lookup_token(self, token_hash: str, now: float) -> Principal | None:
        known = self._tokens.get(token_hash)
        if known is not None and self._heard_within(FRESH_S):
            return known
        epoch = self._token_epoch
        row = await self.pool.fetchrow(Q["token_lookup"], token_hash)
        if row is None:
            return None
        role = Role(row[0])
        found = Principal(role, row[1], token_id=row[3], scopes=stored_scopes(role, row[4]), expires_at=row[2])
        if epoch == self._token_epoch:  # nothing was forgotten while the row was on its way
            if len(self._tokens) >= MAX_CACHED:
                self._forget_tokens(None)
            self._tokens[token_hash] = found
            self._token_hashes[found.token_id] = token_hash
        return found

    async def list_tokens(
        self, role: Role | None, subject: str | None, *, revoked: bool = False, limit: int = 1000
    ) -> list[TokenInfo]:
        rows = await self.pool.fetch(Q["token_list"], role.value if role else None, subject, revoked, limit)
        return [
            TokenInfo(
                id=i,
                role=Role(ro),
                subject=su,
                scopes=sorted(stored_scopes(Role(ro), sc)),
                created_at=c,
                expires_at=e,
                revoked_at=rv,
            )
            for i, ro, su, sc, c, e, rv in rows
        ]

    async def revoke_token(self, token_id: str, now: float) -> list[str]:
        self._forget_tokens([token_id])
        ids = [r[0] for r in await self.pool.fetch(Q["token_revoke"], now, token_id)]
        self._forget_tokens([token_id])  # and what a lookup meanwhile may have kept
        return ids

    async def revoke_subject(self, role: Role, subject: str, now: float) -> list[str]:
        async def tx(con: Connection) -> list[str]:
            ids = [r[0] for r in await con.fetch(Q["token_revoke_subject"], now, role.value, subject)]
            if role is Role.SITE:
                ids += [r[0] for r in await con.fetch(Q["token_revoke_site_pilots"], now, subject)]
            return ids

        ids = await self._tx(tx)
        self._forget_tokens(ids)
        return ids

    async def renew_token(self, token_id: str, expires_at: float) -> None:
        await self.pool.execute(Q["token_renew"], expires_at, token_id)
        self._forget_tokens([token_id])  # read again with its new expiry

    async def purge_tokens(self, before: float) -> int:
        status = await self.pool.execute(Q["token_purge"], before)
        self._forget_tokens(None)
        return int(status.split()[-1])

    async def set_totp(self, subject: str, secret: bytes, now: float) -> None:
        await self.pool.execute(Q["totp_set"], subject, secret, now)

    async def get_totp(self, subject: str) -> bytes | None:
        row = await self.pool.fetchrow(Q["totp_get"], subject)
        return None if row is None else bytes(row[0])

    async def use_totp_step(self, subject: str, step: int) -> bool:
        return await self.pool.fetchrow(Q["totp_use"], step, subject) is not None
