"""Tokens and TOTP secrets in the SQLite store: hashes only, scopes within the role, revocation."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from glidein_client.wire.schema import Role, Scope, TokenInfo
from glidein_server.store.base import Principal, stored_scopes
from glidein_server.store.sqlite_base import Q, SqliteBase

#: A token found in memory is trusted while the worker looked for other processes' commits this recently.
FRESH_S = 1.0
MAX_CACHED = 100_000


class SqliteTokens(SqliteBase):
    """Tokens, with the valid ones found kept in memory: a pilot's heartbeat does not read the database
    to learn who it is. This store's own revocations and renewals update that memory at once; a
    revocation by another process (``glidein-server token revoke``) is a commit by another connection,
    which the worker notices before its next batch (``PRAGMA data_version``), and a token is taken from
    memory only while the worker looked within the last ``FRESH_S`` seconds."""

    _tokens: dict[str, Principal]  # by hash: tokens found valid (expired ones too: the caller says so)
    _token_hashes: dict[str, str]  # token id -> hash, for the tokens in _tokens

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._forget_tokens()

    def _forget_tokens(self) -> None:
        self._tokens, self._token_hashes = {}, {}

    def _changed_elsewhere(self) -> None:
        super()._changed_elsewhere()
        self._forget_tokens()

    def _found_token(self, token_hash: str, principal: Principal) -> None:
        if len(self._tokens) >= MAX_CACHED:
            self._forget_tokens()
        self._tokens[token_hash] = principal
        self._token_hashes[principal.token_id] = token_hash

    @staticmethod
    def _migrate_tokens(db: sqlite3.Connection) -> None:
        """Add the token columns of later releases to an older database, then their indexes."""
        have = {row[1] for row in db.execute("PRAGMA table_info(tokens)")}
        for column in Q["tokens_migrate"].splitlines():
            if column.strip() and not column.startswith("--") and column.split()[0] not in have:
                db.execute(f"ALTER TABLE tokens ADD COLUMN {column}")
        db.executescript(Q["tokens_index"])

    async def add_token(
        self, token_hash: str, role: Role, subject: str, expires_at: float | None, scopes: Sequence[Scope] | None = None
    ) -> str:
        """Store a token's hash; returns its public id."""
        token_id = token_hash[:16]
        text = " ".join(sorted({s.value for s in scopes})) if scopes else ""
        await self._tx(
            lambda db: db.execute(
                Q["token_insert"], (token_hash, role.value, subject, time.time(), expires_at, token_id, text)
            )
        )
        return token_id

    async def lookup_token(self, token_hash: str, now: float) -> Principal | None:
        """The token's principal (expired ones too: the caller says so); None if unknown or revoked."""
        known = self._tokens.get(token_hash)
        if known is not None and time.monotonic() - self.checked_at < FRESH_S:
            return known
        return await self._quick_read(self._lookup_token, self._conn, token_hash)

    def _lookup_token(self, db: sqlite3.Connection, token_hash: str) -> Principal | None:
        row = db.execute(Q["token_lookup"], (token_hash,)).fetchone()
        if row is None:
            return None
        role = Role(row[0])
        principal = Principal(role, row[1], token_id=row[3], scopes=stored_scopes(role, row[4]), expires_at=row[2])
        self._found_token(token_hash, principal)
        return principal

    async def list_tokens(
        self, role: Role | None, subject: str | None, *, revoked: bool = False, limit: int = 1000
    ) -> list[TokenInfo]:
        r = role.value if role else None

        def read(db: sqlite3.Connection) -> list[TokenInfo]:
            rows = db.execute(Q["token_list"], (r, r, subject, subject, revoked, limit)).fetchall()
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

        return await self._read(read, self._conn)

    async def revoke_token(self, token_id: str, now: float) -> list[str]:
        def tx(db: sqlite3.Connection) -> list[str]:
            self._forget_tokens()
            return [r[0] for r in db.execute(Q["token_revoke"], (now, token_id))]

        return await self._tx(tx)

    async def revoke_subject(self, role: Role, subject: str, now: float) -> list[str]:
        """Revoke every token of a user, site or operator; a site's pilots lose theirs too."""

        def tx(db: sqlite3.Connection) -> list[str]:
            self._forget_tokens()
            ids = [r[0] for r in db.execute(Q["token_revoke_subject"], (now, role.value, subject))]
            if role is Role.SITE:
                ids += [r[0] for r in db.execute(Q["token_revoke_site_pilots"], (now, subject))]
            return ids

        return await self._tx(tx)

    async def renew_token(self, token_id: str, expires_at: float) -> None:
        def tx(db: sqlite3.Connection) -> None:
            self._tokens.pop(self._token_hashes.pop(token_id, ""), None)  # read again with its new expiry
            db.execute(Q["token_renew"], (expires_at, token_id, expires_at))

        await self._quick_tx(tx)

    async def purge_tokens(self, before: float) -> int:
        def tx(db: sqlite3.Connection) -> int:
            self._forget_tokens()
            return int(db.execute(Q["token_purge"], (before, before)).rowcount)

        return await self._tx(tx)

    async def set_totp(self, subject: str, secret: bytes, now: float) -> None:
        await self._tx(lambda db: db.execute(Q["totp_set"], (subject, secret, now)))

    async def get_totp(self, subject: str) -> bytes | None:
        row = await self._read(lambda: self._conn.execute(Q["totp_get"], (subject,)).fetchone())
        return None if row is None else bytes(row[0])

    async def use_totp_step(self, subject: str, step: int) -> bool:
        """Record that the code of time step ``step`` was used; False if it (or a newer one) was already."""
        return await self._tx(lambda db: db.execute(Q["totp_use"], (step, subject, step)).rowcount == 1)
