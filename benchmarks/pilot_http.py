"""A light HTTP/1.1 client for the thousands of simulated pilots of ``benchmarks.scale``.

The benchmark runs on the same cores as the server it measures, so every millisecond its pilots'
client spends is taken from the server and depresses the rates it reports; real pilots run on other
machines. One ``ApiClient`` (an aiohttp session) per pilot cost about half the server's CPU per sync.
Here the server is asked exactly the same as before: one ``POST`` per pilot sync, with that pilot's
own bearer token, the same JSON body and ``Content-Type`` (aiohttp's ``Accept``, ``Accept-Encoding``
and ``User-Agent`` headers, which the server does not read, are left out), each pilot over its own
kept-alive HTTP/1.1 connection, as a real pilot's (the server thus still holds one connection per
pilot, whose objects its memory and cycle collector carry). A connection idle for 15 s is closed
here and a new one opened at the pilot's next request, as aiohttp's client does. What is lighter is
only this side: each request is written as bytes prepared once per pilot and path, constant bodies
are encoded once, and an answer is read by its ``Content-Length`` and decoded only as far as the
benchmark needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import urlsplit

import msgspec

API = "/api/v1"
#: A connection idle for longer is closed before its next request, as aiohttp's client does.
IDLE_S = 15.0


class Held(msgspec.Struct):
    """What the benchmark reads of a claimed job: what its pilot reports back when it finishes."""

    attempt_id: int
    lease: str


class Answer(msgspec.Struct):
    """What the benchmark reads of a sync's answer (any other field is skipped, not decoded)."""

    jobs: list[Held] = []


ANSWER = msgspec.json.Decoder(Answer)


class HttpError(RuntimeError):
    """The server answered a pilot's request with an error status."""


class Link:
    """One pilot's kept-alive connection to its server, with its token in each request."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"{url}: the benchmark's pilots speak plain http:// only")
        self.host, self.port = parts.hostname, parts.port or 80
        self.lines = f"HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
        self.conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.used = 0.0

    def head(self, path: str) -> bytes:
        """The start of this pilot's ``POST`` to ``path``, up to its ``Content-Length`` line."""
        return f"POST {API}{path} {self.lines}Content-Type: application/json\r\n".encode()

    async def post(self, head: bytes, body: bytes) -> bytes:
        """Send ``head`` (from :meth:`head`) with ``body``; the answer's body."""
        request = b"%bContent-Length: %d\r\n\r\n%b" % (head, len(body), body)
        if self.conn is not None and time.monotonic() - self.used > IDLE_S:
            self.close()
        reused = self.conn is not None
        try:
            status, answer, keep = await self._exchange(request)
        except asyncio.IncompleteReadError as exc:
            self.close()
            if exc.partial or not reused:
                raise
            # The server closed the kept-alive connection before reading the request: send it again.
            status, answer, keep = await self._exchange(request)
        except BaseException:
            self.close()
            raise
        self.used = time.monotonic()
        if not keep:
            self.close()
        if status >= 400:
            raise HttpError(f"HTTP {status} from {head.split(b' ', 2)[1].decode()}: {answer[:300]!r}")
        return answer

    async def _exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """Send one request; (status, body, whether the connection may be used again)."""
        if self.conn is None:
            self.conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.conn
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        if b"\r\ntransfer-encoding:" in lower:
            raise HttpError("the server answered a pilot in chunks; this client reads Content-Length only")
        at = lower.find(b"\r\ncontent-length:")
        length = int(head[at + 17 : head.index(b"\r\n", at + 2)]) if at >= 0 else 0
        body = await reader.readexactly(length) if length else b""
        return status, body, b"\r\nconnection: close" not in lower

    def close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None

    async def aclose(self) -> None:
        if self.conn is not None:
            writer = self.conn[1]
            self.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
