"""Tokens and TOTP secrets in the PostgreSQL store: hashes only, scopes within the role, revocation."""

from __future__ import annotations

import time
from collections.abc import Sequence

from glidein_client.wire.schema import Role, Scope, TokenInfo
from glidein_server.store.base import Principal, stored_scopes
from glidein_server.store.postgres_base import Connection, PostgresBase, Q


class PostgresTokens(PostgresBase):
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
        row = await self.pool.fetchrow(Q["token_lookup"], token_hash)
        if row is None:
            return None
        role = Role(row[0])
        return Principal(role, row[1], token_id=row[3], scopes=stored_scopes(role, row[4]), expires_at=row[2])

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
        return [r[0] for r in await self.pool.fetch(Q["token_revoke"], now, token_id)]

    async def revoke_subject(self, role: Role, subject: str, now: float) -> list[str]:
        async def tx(con: Connection) -> list[str]:
            ids = [r[0] for r in await con.fetch(Q["token_revoke_subject"], now, role.value, subject)]
            if role is Role.SITE:
                ids += [r[0] for r in await con.fetch(Q["token_revoke_site_pilots"], now, subject)]
            return ids

        return await self._tx(tx)

    async def renew_token(self, token_id: str, expires_at: float) -> None:
        await self.pool.execute(Q["token_renew"], expires_at, token_id)

    async def purge_tokens(self, before: float) -> int:
        status = await self.pool.execute(Q["token_purge"], before)
        return int(status.split()[-1])

    async def set_totp(self, subject: str, secret: bytes, now: float) -> None:
        await self.pool.execute(Q["totp_set"], subject, secret, now)

    async def get_totp(self, subject: str) -> bytes | None:
        row = await self.pool.fetchrow(Q["totp_get"], subject)
        return None if row is None else bytes(row[0])

    async def use_totp_step(self, subject: str, step: int) -> bool:
        return await self.pool.fetchrow(Q["totp_use"], step, subject) is not None
