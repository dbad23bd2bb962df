"""Secrets kept in files (tokens, TOTP secrets): read them, refusing files others can read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from glidein_client.wire.errors import ConfigError


def read_secret_file(path: str, *, what: str, config: str | None = None) -> str:
    """Read a secret; refuse files that others can read."""
    where = f" (named in {config})" if config else ""
    try:
        st = os.stat(path)
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"Cannot read the {what} file {path}{where}: {exc.strerror}.",
            hint="Check the path; `glidein-server site add NAME` prints a new site token.",
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"The {what} file {path}{where} can be read by other users.",
            hint=f"Run: chmod 600 {path}",
        )
    if not text:
        raise ConfigError(f"The {what} file {path}{where} is empty.")
    return text
