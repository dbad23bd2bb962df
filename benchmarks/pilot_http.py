"""A light HTTP/1.1 client for the thousands of simulated pilots of ``benchmarks.scale``.

The benchmark runs on the same cores as the server it measures, so every millisecond its pilots'
client spends is taken from the server and depresses the rates it reports; real pilots run on other
machines. One ``ApiClient`` (an aiohttp session) per pilot cost about half the server's CPU per sync.
Here the server is asked exactly the same: one ``POST`` per pilot sync, with that pilot's own bearer
token, the same JSON body and ``Content-Type``, over a kept-alive HTTP/1.1 connection as a real pilot's
would be. What is lighter is only this side: the pilots share one pool of keep-alive connections per
server (as many as pilots talk at once, so none waits for one), each request is written as bytes
prepared once per pilot and path, constant bodies are encoded once, and an answer is read by its
``Content-Length`` and decoded only as far as the benchmark needs it. The server therefore holds 32
connections rather than one idle connection per pilot; an idle keep-alive connection costs it no CPU
per sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import urlsplit

import msgspec

API = "/api/v1"
#: A connection idle for longer is closed here before the server's keep-alive timeout (75 s) can.
IDLE_S = 30.0


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


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = time.monotonic()

    def close(self) -> None:
        self.writer.close()

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """Send one request; (status, body, whether the connection may be used again)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        if b"\r\ntransfer-encoding:" in lower:
            raise HttpError("the server answered a pilot in chunks; this client reads Content-Length only")
        at = lower.find(b"\r\ncontent-length:")
        length = int(head[at + 17 : head.index(b"\r\n", at + 2)]) if at >= 0 else 0
        body = await self.reader.readexactly(length) if length else b""
        return status, body, b"\r\nconnection: close" not in lower


class Pool:
    """Keep-alive connections to one server, shared by every pilot that talks to it."""

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"{url}: the benchmark's pilots speak plain http:// only")
        self.host, self.port = parts.hostname, parts.port or 80
        self.netloc = parts.netloc
        self.slots = asyncio.Semaphore(size)
        self.idle: list[_Conn] = []

    def request_head(self, path: str, token: str) -> bytes:
        """The start of a pilot's ``POST`` to ``path``, up to its ``Content-Length`` line."""
        return (
            f"POST {API}{path} HTTP/1.1\r\nHost: {self.netloc}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n"
        ).encode()

    async def post(self, head: bytes, body: bytes) -> bytes:
        """Send ``head`` (from :meth:`request_head`) with ``body``; the answer's body."""
        request = b"%bContent-Length: %d\r\n\r\n%b" % (head, len(body), body)
        async with self.slots:
            status, answer = await self._send(request)
        if status >= 400:
            raise HttpError(f"HTTP {status} from {head.split(b' ', 2)[1].decode()}: {answer[:300]!r}")
        return answer

    async def _send(self, request: bytes) -> tuple[int, bytes]:
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if now - conn.used < IDLE_S:
                break
            conn.close()
        else:
            conn = await self._connect()
        try:
            status, answer, keep = await conn.exchange(request)
        except asyncio.IncompleteReadError as exc:
            conn.close()
            if exc.partial:
                raise
            # The server closed this kept-alive connection before reading the request: send it again.
            conn = await self._connect()
            try:
                status, answer, keep = await conn.exchange(request)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            conn.close()
            raise
        if keep:
            conn.used = time.monotonic()
            self.idle.append(conn)
        else:
            conn.close()
        return status, answer

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Conn(reader, writer)

    async def close(self) -> None:
        conns, self.idle = self.idle, []
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                await conn.writer.wait_closed()
