"""One site client per config file: ``run`` and ``once`` hold a lock file.

Two clients on one config would each count only their own pilots and submit twice the demand.
The lock lives in ``$XDG_RUNTIME_DIR/glidein`` (or ``~/.cache/glidein``), named after the site and
the config's path; the holder writes its pid there, so a second client can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from glidein_client.wire.errors import ConfigError


def lock_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "glidein"


@contextlib.contextmanager
def site_lock(site: str, config: str, directory: Path | None = None) -> Iterator[Path]:
    """Hold the site's lock for the block; a held lock is a plain error naming its holder."""
    where = directory or lock_dir()
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    config_path = os.path.abspath(config)
    path = where / f"client-{site}-{hashlib.sha256(config_path.encode()).hexdigest()[:12]}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1024, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(
                f"Another glidein-client already runs {config_path} (site {site}): {holder}.",
                hint="Stop that one first (or let its cycle finish): two clients of one site submit twice the pilots.",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield path
    finally:
        os.close(fd)


def lock_holder(site: str, config: str, directory: Path | None = None) -> str | None:
    """Who holds the site's lock now (``pid N``), or None when no client runs this config."""
    try:
        with site_lock(site, config, directory):
            return None
    except ConfigError as exc:
        return str(exc.message).split(": ", 1)[-1].rstrip(".") or "another process"
