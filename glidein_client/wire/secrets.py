"""Secrets kept in files (tokens, TOTP secrets): read them, refusing files others can read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from glidein_client.wire.errors import ConfigError


def read_secret_file(path: str, *, what: str, config: str | None = None, fix: str | None = None) -> str:
    """Read a secret; refuse files that others can read. Every problem is a :class:`ConfigError`
    that names the file (and the config key that points at it) and says what to do; ``fix`` says
    where a new secret comes from."""
    where = f" (named in {config})" if config else ""
    fix = fix or ("`glidein-server site add NAME` prints a new site token." if "token" in what else "")
    try:
        st = os.stat(path)
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"Cannot read the {what} file {path}{where}: {exc.strerror or exc}.",
            hint=f"Check the path{' in ' + config if config else ''}. {fix}".strip(),
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"The {what} file {path}{where} is not text; it should hold the {what} on one line.",
            hint=f"Check that the path names the right file. {fix}".strip(),
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"The {what} file {path}{where} can be read by other users.",
            hint=f"Run: chmod 600 {path}",
        )
    if not text:
        raise ConfigError(
            f"The {what} file {path}{where} is empty.",
            hint=f"Put the {what} in it, on one line. {fix}".strip(),
        )
    return text
