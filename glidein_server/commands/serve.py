"""``glidein-server serve``: run the server; one server per state directory (a lock says which)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from glidein_client.wire.errors import ConfigError
from glidein_server.collector import long_lived_heap_frozen
from glidein_server.commands.common import state_dir
from glidein_server.server import Server
from glidein_server.store.postgres import is_postgres_url

LOCK_NAME = "serve.lock"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    serve = sub.add_parser("serve", parents=[common], help="run the server")
    serve.add_argument("--host", help="address to listen on (default: host in config.toml)")
    serve.add_argument("--port", type=int, help="port to listen on (default: port in config.toml; 0: any free port)")
    serve.set_defaults(handler=cmd_serve)


@contextlib.contextmanager
def state_lock(root: Path) -> Iterator[Path]:
    """Hold ``root/serve.lock`` while serving: a second server on the same database is refused."""
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(
                f"Another glidein server already serves the state directory {root} ({holder}).",
                hint="Stop that one first; two servers on one SQLite database would corrupt each other's view. "
                "For a second server, init another state directory.",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing releases the lock


async def cmd_serve(args: argparse.Namespace) -> int:
    state = state_dir(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    settings = state.load()
    # Replicas on one PostgreSQL database may share a state directory; a SQLite one is served once.
    guard: contextlib.AbstractContextManager[Path | None] = (
        contextlib.nullcontext(None) if is_postgres_url(settings.database) else state_lock(state.root)
    )
    with guard as lock:
        async with Server(str(state.root), host=args.host, port=args.port) as srv:
            if lock is not None:
                _describe(lock, srv)
            print(f"glidein server listening on {srv.listen}; clients use {srv.url}", flush=True)
            with long_lived_heap_frozen(loop):  # no full walk of the pilots' connections per request burst
                await stop.wait()
    return 0


def _describe(lock: Path, srv: Server) -> None:
    fd = os.open(lock, os.O_WRONLY)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, listening on {srv.listen}".encode(), 0)
    finally:
        os.close(fd)
