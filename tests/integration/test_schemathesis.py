"""schemathesis against the served OpenAPI document: no request, valid or not, gets a server error.

Bounded and deterministic: for every operation, a fixed number of cases that fit the
document and of cases that do not, from a fixed seed. Each operation is called with a token
its roles accept (the operator's where it may, else a registered pilot's) and, for operator
actions, a fresh one-time code, so the cases reach the handlers rather than stopping at the door.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobSpec, PilotRegister, PilotShape, Resources, Role
from glidein_server import totp
from glidein_server.server import Server, mint_token
from glidein_server.settings import ServerSettings, StateDir

pytestmark = [pytest.mark.slow]

POSITIVE_CASES = 6  # per operation
NEGATIVE_CASES = 4
SEED = 20261122
PILOT_SITE = "fuzz-pilots-site"


@dataclass
class Fuzzed:
    url: str
    tokens: dict[Role, str]
    code: Callable[[], str]
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


@asynccontextmanager
async def _server(root: Path) -> AsyncIterator[Fuzzed]:
    state = StateDir(root)
    state.write(
        ServerSettings(
            port=0,
            insecure_http=True,
            heartbeat_s=0.1,
            lease_s=5.0,
            rate_operator_per_s=0,
            rate_user_per_s=0,
            rate_site_per_s=0,
            rate_pilot_per_s=0,
            rate_anonymous_per_s=0,
        )
    )
    async with Server(str(root)) as srv:
        assert srv.api is not None
        store = srv.store
        key = totp.load_or_create_key(root / "totp.key")
        secret, _ = await totp.enrol(store, key, "operator")
        guard = srv.api.admin.totp
        guard.key = key
        clock = [time.time()]
        guard.clock = lambda: clock[0]

        def code() -> str:
            clock[0] += totp.STEP_S
            return pyotp.TOTP(secret).at(clock[0])

        tokens = {
            Role.OPERATOR: await mint_token(store, Role.OPERATOR, "operator"),
            Role.USER: await mint_token(store, Role.USER, "alice"),
        }
        async with ApiClient(srv.url, tokens[Role.USER]) as alice:
            await alice.submit([JobSpec(argv=["true"]) for _ in range(3)])
        async with ApiClient(srv.url, await mint_token(store, Role.SITE, PILOT_SITE)) as site:
            await site.demand(PILOT_SITE, PilotShape(cpus=4, memory_mb=4000, disk_mb=1000, walltime_s=7200))
            tokens[Role.PILOT] = (await site.new_pilot(PILOT_SITE)).token
        async with ApiClient(srv.url, tokens[Role.PILOT]) as pilot:
            await pilot.register(
                PilotRegister(resources=Resources(cpus=4, memory_mb=4000, disk_mb=1000), end_time=time.time() + 7200)
            )
        yield Fuzzed(url=srv.url, tokens=tokens, code=code)


class ServerThread:
    """The server on its own event loop in a thread, so that schemathesis can call it synchronously."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ready = threading.Event()
        self.fuzzed: Fuzzed | None = None
        self.failure: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="glidein-fuzz-server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test
            self.failure = exc
            self.ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with _server(self.root) as fuzzed:
            self.fuzzed = fuzzed
            self.ready.set()
            await self._stop.wait()

    def __enter__(self) -> Fuzzed:
        self._thread.start()
        self.ready.wait(30)
        if self.fuzzed is None:
            raise RuntimeError(f"the server did not start: {self.failure!r}")
        return self.fuzzed

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def _token_for(roles: list[str], tokens: dict[Role, str]) -> str | None:
    if not roles:
        return None
    return tokens[Role.OPERATOR] if "operator" in roles else tokens[Role(roles[0])]


def _fuzz(fuzzed: Fuzzed, operation: Any, mode: GenerationMode, n: int) -> None:
    roles = operation.definition.raw.get("x-roles", [])
    token = _token_for(roles, fuzzed.tokens)
    session = requests.Session()

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        if operation.path.endswith("/wait") and isinstance(case.body, dict):  # long polls answer at once
            timeout = case.body.get("timeout_s", 30.0)
            if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
                case.body["timeout_s"] = min(timeout, 0.05)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if operation.path.startswith("/api/v1/admin/"):
            headers["X-Glidein-TOTP"] = fuzzed.code()
        response = case.call(base_url=fuzzed.url, session=session, headers=headers, timeout=10)
        fuzzed.statuses[response.status_code] += 1
        if response.status_code >= 500:
            fuzzed.errors.append(
                f"{operation.method.upper()} {operation.path} ({mode.value}) -> "
                f"{response.status_code}: {response.text[:300]}\n  {case.as_curl_command()}"
            )

    try:
        run()
    except Unsatisfiable:  # nothing about it can be invalid (e.g. GET /health)
        assert mode is GenerationMode.NEGATIVE


def test_no_server_errors_for_generated_requests(tmp_path: Path) -> None:
    started = time.monotonic()
    with ServerThread(tmp_path / "server") as fuzzed:
        schema = schemathesis.openapi.from_url(f"{fuzzed.url}/api/v1/openapi.json", config=schemathesis.Config())
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 25
        for operation in operations:
            _fuzz(fuzzed, operation, GenerationMode.POSITIVE, POSITIVE_CASES)
            _fuzz(fuzzed, operation, GenerationMode.NEGATIVE, NEGATIVE_CASES)
    total = sum(fuzzed.statuses.values())
    print(
        f"schemathesis: {total} cases over {len(operations)} operations in {time.monotonic() - started:.1f} s; "
        f"statuses {dict(sorted(fuzzed.statuses.items()))}"
    )
    assert total >= 100
    assert not fuzzed.errors, "server errors:\n" + "\n".join(fuzzed.errors)
