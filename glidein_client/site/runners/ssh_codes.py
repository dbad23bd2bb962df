"""One-time codes for SSH logins with a TOTP second factor: read the secret, never send a code twice."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pyotp

from glidein_client.wire.errors import ConfigError
from glidein_client.wire.secrets import read_secret_file

log = logging.getLogger(__name__)


def read_totp_secret(path: str, *, config: str | None = None) -> pyotp.TOTP:
    """The TOTP generator of a secret file: a base32 secret on its first line, or an otpauth:// URI.

    The file must be readable by its owner only (chmod 600), like every secret of glidein.
    """
    where = f"{config} as ssh.totp_secret_file" if config else None
    enrolled = "the secret shown when the login was enrolled (e.g. by google-authenticator)"
    text = read_secret_file(path, what="TOTP secret", config=where, fix=f"Put {enrolled} there.")
    text = text.splitlines()[0].strip()
    named = f" (named in {where})" if where else ""
    bad = ConfigError(
        f"The TOTP secret file {path}{named} holds neither a base32 secret nor an otpauth:// URI on its first line.",
        hint=f"Put {enrolled} there.",
        field="ssh.totp_secret_file",
    )
    if text.startswith("otpauth://"):
        secret = "".join(parse_qs(urlsplit(text).query).get("secret", [""])[:1])
    else:
        secret = text.replace(" ", "")
    secret = secret.upper()
    try:
        bits = len(base64.b32decode(secret + "=" * (-len(secret) % 8))) * 8
    except ValueError:
        raise bad from None
    if bits < pyotp.OTP.min_secret_length_bits:  # pyotp refuses these, as RFC 4226 asks
        raise ConfigError(
            f"The TOTP secret in {path}{named} is {bits} bits long; one-time codes need a secret of at least "
            f"{pyotp.OTP.min_secret_length_bits} bits (23 base32 characters), or anyone could guess them.",
            hint="Enrol the login again with a longer secret (google-authenticator makes 160-bit ones: 32 "
            f"base32 characters) and put the new secret in {path}.",
            field="ssh.totp_secret_file",
        )
    if not text.startswith("otpauth://"):
        return pyotp.TOTP(secret)
    try:
        otp = pyotp.parse_uri(text)
    except ValueError:
        raise bad from None
    if not isinstance(otp, pyotp.TOTP):
        raise bad
    return otp


class CodeLedger:
    """The TOTP window (counter) of the last code sent per login target.

    Shared by every runner of this process, and saved in a small file beside the secret so that
    another glidein process (a cron run after ``check``) does not send the same code either.
    """

    _used: ClassVar[dict[str, int]] = {}

    @classmethod
    def reserve(cls, target: str, interval_s: int, state_file: str | None) -> tuple[int, float]:
        """Take the first window not used yet for ``target``; return it and the seconds until it starts.

        Runs without awaiting, so two logins of this process never take the same window.
        """
        saved = cls._read(state_file).get(target)
        last = max((v for v in (cls._used.get(target), saved) if isinstance(v, int)), default=None)
        now = time.time()
        counter = int(now // interval_s)
        wait_s = 0.0
        if last is not None and counter <= last:
            counter = last + 1
            wait_s = counter * interval_s - now + 0.2
        cls._used[target] = counter
        cls._write(state_file, target, counter)
        return counter, wait_s

    @staticmethod
    def _read(state_file: str | None) -> dict[str, object]:
        try:
            with open(state_file or "", encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @classmethod
    def _write(cls, state_file: str | None, target: str, counter: int) -> None:
        if state_file:
            tmp = f"{state_file}.tmp{os.getpid()}"
            try:
                with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
                    json.dump({**cls._read(state_file), target: counter}, fh)
                os.replace(tmp, state_file)
            except OSError as exc:  # the in-process record still holds
                log.debug("cannot record the used one-time code in %s: %s", state_file, exc)
