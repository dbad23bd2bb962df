"""What every route of the API shares: the route table's type, JSON answers, path parsers, the request guard.

The route classes (:mod:`~glidein_server.http.app`, :mod:`~glidein_server.http.admin`,
:mod:`~glidein_server.http.staging`) and :mod:`~glidein_server.http.openapi` import this module and
never each other's insides: a handler asks the :class:`Guard` who is calling, decodes its body with
it, and tells it when new work may be claimable.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.typedefs import Middleware

from glidein_client.wire.codec import decode
from glidein_client.wire.errors import GlideinError, ValidationError
from glidein_client.wire.schema import MAX_INT, MAX_JOBS_PER_REQUEST, ErrorBody, Role
from glidein_server.http import auth
from glidein_server.http.pilot_news import PilotWakeups
from glidein_server.store.base import Principal

log = logging.getLogger(__name__)
API = "/api/v1"
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
#: Bodies from this size on are decoded with the cycle collector paused (a bulk submit's jobs).
LARGE_BODY_BYTES = 64 << 10
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One operation of the API: what it does, who may call it, what it reads and answers."""

    method: str
    path: str
    handler: Handler
    summary: str
    roles: tuple[Role, ...]
    request: Any = None
    response: Any = None
    binary: bool = False


#: The answer's headers, given as they are: aiohttp's ``content_type=`` parses and rebuilds them on
#: every response, which took about half of the building of a pilot's answer.
JSON_HEADERS = {"Content-Type": "application/json"}


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(obj), status=status, headers=JSON_HEADERS)


def parse_int(text: str, what: str) -> int:
    """A whole number from a path or query parameter, within what the database stores."""
    try:
        value = int(text)
    except ValueError:
        raise ValidationError(f"{what}: {text!r} is not a whole number.", field=what) from None
    if not -MAX_INT - 1 <= value <= MAX_INT:
        raise ValidationError(f"{what}: {text} is too large.", field=what)
    return value


def parse_count(text: str, what: str) -> int:
    """A whole number of 0 or more from a query parameter (a limit, an offset)."""
    value = parse_int(text, what)
    if value < 0:
        raise ValidationError(f"{what} must be 0 or more, not {value}.", field=what)
    return value


def parse_choice(query: Mapping[str, str], name: str, allowed: tuple[str, str]) -> str:
    """A query parameter that is one of ``allowed`` (the first when absent)."""
    value = query.get(name, allowed[0])
    if value not in allowed:
        raise ValidationError(f"{name} must be {' or '.join(allowed)}, not {value!r}.", field=name)
    return value


def parse_sha(text: str) -> str:
    if not SHA_RE.match(text):
        raise ValidationError("A sha256 must be 64 lowercase hexadecimal characters.", field="sha256")
    return text


class WorkSignal:
    """Wakes long pollers when new work may be claimable; ``generation`` counts the notifications."""

    def __init__(self) -> None:
        self._fut: asyncio.Future[None] | None = None
        self.generation = 0

    def notify(self) -> None:
        self.generation += 1
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(None)
        self._fut = None

    async def wait(self, timeout_s: float, since: int | None = None) -> bool:
        """True when notified; at once when ``since`` is an older generation than the current one."""
        if since is not None and since != self.generation:
            return True
        if self._fut is None:
            self._fut = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._fut), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False


class Guard:
    """The request guard every handler uses: who is calling, the decoded body, waking waiters."""

    def __init__(self, authenticator: auth.Authenticator) -> None:
        self.auth = authenticator
        self.work = WorkSignal()  # wakes pilots waiting for something to claim
        self.demand_changed = WorkSignal()  # wakes site clients waiting for new demand
        self.pilots = PilotWakeups()  # wakes one pilot's long poll (a cancel, its own report)

    async def who(self, request: web.Request, *roles: Role) -> Principal:
        """The caller, refused unless it has one of ``roles`` and the scope the route needs."""
        seen = auth.resolved.get()  # the rate limit resolved the token already
        if seen is not None and seen[0] is request:
            principal = seen[1]
        else:
            principal = await self.auth.principal(request.headers.get("Authorization"))
        auth.require(principal, *roles)
        auth.require_scope(principal, auth.scope_of(request.method, request.path))
        return principal

    async def site(self, request: web.Request, *roles: Role) -> tuple[str, Principal]:
        """The ``{site}`` of the path and the caller, refused unless the caller may act for that site."""
        site = request.match_info["site"]
        principal = await self.who(request, *roles)
        auth.require_site(principal, site)
        return site, principal

    async def body(self, request: web.Request, type_: type[Any], what: str) -> Any:
        data = await request.read()
        if len(data) < LARGE_BODY_BYTES:
            return decode(data, type_, what=what)
        with collection_paused():
            return decode(data, type_, what=what)

    def new_work(self) -> None:
        """Jobs may have become claimable: wake waiting pilots and site clients."""
        self.work.notify()
        self.demand_changed.notify()


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """Python's cycle collector paused for a synchronous step that allocates many objects that all
    live on (decoding 10,000 jobs makes 40,000): otherwise it runs every 700 of them and walks the
    ones already made, again and again. Nothing awaits inside, so no other request runs meanwhile."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def error_middleware(max_request_bytes: int) -> Middleware:
    """Every refusal and failure answers JSON with a plain message and a hint; never a traceback."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except GlideinError as exc:
            return json_response(exc.to_wire(), status=exc.http_status)
        except OverflowError:  # a number beyond what the database stores; its transaction was rolled back
            return json_response(
                ErrorBody(
                    error="A number in the request is too large (at most 2^63 - 1).",
                    hint="Send the value the API expects; nothing was changed.",
                ),
                status=400,
            )
        except web.HTTPRequestEntityTooLarge:
            return json_response(
                ErrorBody(
                    error=f"The request is larger than {max_request_bytes >> 20} MB.",
                    hint=f"Split it: at most {MAX_JOBS_PER_REQUEST} jobs per request.",
                ),
                status=413,
            )
        except web.HTTPException as exc:
            if exc.status >= 400:
                return json_response(
                    ErrorBody(error=exc.reason or "request refused", hint="See /api/v1/openapi.json for the API."),
                    status=exc.status,
                )
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return json_response(
                ErrorBody(
                    error="The server hit an internal error; nothing was changed by "
                    "this request unless it says otherwise.",
                    hint="Try again; if it persists, the operator can find details in the server log.",
                ),
                status=500,
            )

    return middleware
