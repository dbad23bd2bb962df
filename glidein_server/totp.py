"""The operators' second factor: TOTP codes (RFC 6238) from an authenticator app.

Secrets are encrypted at rest with a key kept in its own file in the state directory (mode
0600, apart from the database), so a copy of the database alone does not reveal them. A code
is accepted once: the time step it belongs to is recorded and no code of that step or an
older one is accepted again. After a few wrong codes in a row the operator waits a while.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyotp
from cryptography.fernet import Fernet, InvalidToken

from glidein_client.wire.errors import AuthError, ConfigError
from glidein_server.store.base import Store
from glidein_server.tls import write_private

HEADER = "X-Glidein-TOTP"
ISSUER = "glidein"
STEP_S = 30
WINDOW = 1  # steps accepted either side of now, for clock drift
MAX_FAILURES = 5
LOCKOUT_S = 60.0


def load_or_create_key(path: Path) -> bytes:
    """The Fernet key in ``path``; made (0600) when missing. A key readable by others is refused."""
    if not path.exists():
        write_private(path, Fernet.generate_key())
    if os.stat(path).st_mode & 0o077:
        raise ConfigError(f"The TOTP key file {path} can be read by other users.", hint=f"Run: chmod 600 {path}")
    return path.read_bytes().strip()


def load_key(path: Path) -> bytes | None:
    return load_or_create_key(path) if path.exists() else None


async def enrol(store: Store, key: bytes, subject: str, *, issuer: str = ISSUER) -> tuple[str, str]:
    """Give ``subject`` a new TOTP secret (replacing any older one): (secret, provisioning URI)."""
    secret = pyotp.random_base32()
    await store.set_totp(subject, Fernet(key).encrypt(secret.encode()), time.time())
    return secret, pyotp.TOTP(secret).provisioning_uri(name=subject, issuer_name=issuer)


@dataclass
class TotpGuard:
    """Checks the one-time code of an operator action."""

    store: Store
    key: bytes | None = field(repr=False)
    clock: Callable[[], float] = time.time
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)

    async def check(self, subject: str, code: str | None) -> None:
        """Raise :class:`AuthError` unless ``code`` is a fresh valid code of ``subject``."""
        hint = f"Send the 6-digit code of your authenticator app in the {HEADER} header."
        if not code:
            raise AuthError("This operator action needs a one-time code (TOTP).", hint=hint)
        now = self.clock()
        # The attempt is counted before the first await: parallel guesses each see the ones
        # before them, so no more than MAX_FAILURES codes are ever evaluated per lockout.
        fails, since = self._failures.get(subject, (0, now))
        if now - since >= LOCKOUT_S:
            fails = 0
        if fails >= MAX_FAILURES:
            raise AuthError(f"Too many wrong one-time codes; wait {LOCKOUT_S - (now - since):.0f} s.")
        self._failures[subject] = (fails + 1, now)
        secret_enc = await self.store.get_totp(subject) if self.key is not None else None
        if secret_enc is None:
            raise AuthError(
                f"The operator {subject!r} has no one-time code set up on this server.",
                hint=f"On the server host: glidein-server operator totp-enrol --subject {subject}",
            )
        try:
            secret = Fernet(self.key or b"").decrypt(secret_enc).decode()
        except (InvalidToken, ValueError):
            raise AuthError(
                "The server cannot read this operator's TOTP secret (the key file changed).",
                hint=f"On the server host: glidein-server operator totp-enrol --subject {subject}",
            ) from None
        totp = pyotp.TOTP(secret, interval=STEP_S)
        step = int(now // STEP_S)
        matched = next(
            (
                s
                for s in range(step + WINDOW, step - WINDOW - 1, -1)
                if hmac.compare_digest(totp.generate_otp(s), code.strip())
            ),
            None,
        )
        if matched is None:
            raise AuthError("The one-time code is wrong or expired.", hint=hint)
        if not await self.store.use_totp_step(subject, matched):
            fails_now, last = self._failures.get(subject, (1, now))
            self._failures[subject] = (max(0, fails_now - 1), last)  # a replay is not a guess
            raise AuthError(
                "This one-time code was already used.",
                hint="Wait for the next code of your authenticator app (every 30 s).",
            )
        self._failures.pop(subject, None)
