"""Content-addressed file storage: inputs and outputs, each kept once under its sha256."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import StreamReader

from glidein_client.wire.errors import ValidationError


class FileStore:
    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def remove(self, sha256: str) -> bool:
        """Delete the file stored under ``sha256``; False if there was none."""
        try:
            self.path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    async def put(self, sha256: str, body: StreamReader) -> int:
        """Store the stream under ``sha256``; refuse it if the content does not match."""
        async with self.incoming(sha256, body) as size:
            return size

    @asynccontextmanager
    async def incoming(self, sha256: str, body: StreamReader) -> AsyncIterator[int]:
        """Receive the stream into a temporary file and yield its size.

        The file takes its place under ``sha256`` only when the block ends without an error;
        otherwise (a refused output, a stale lease) nothing is left on disk.
        """
        dest = self.path(sha256)
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = dest.with_name(f".{sha256}.{uuid.uuid4().hex}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as fh:  # noqa: ASYNC230 - local disk, chunked writes
                async for chunk in body.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise ValidationError(
                            f"The file is larger than the server's limit of {self.max_bytes // (1 << 20)} MB.",
                            hint="Put large inputs on a web server and give their URL instead.",
                        )
                    digest.update(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if digest.hexdigest() != sha256:
                raise ValidationError(
                    "The uploaded file does not match its sha256 checksum; it was not stored.",
                    hint="The transfer was corrupted; upload it again.",
                )
            yield size
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
