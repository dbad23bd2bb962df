"""The access matrix: every route of the API × every kind of caller, allowed or refused as intended.

The routes come from the server's own route table (``Api.routes``): a new route without an
entry here fails. Each route runs against a fresh world where alice owns a finished job (with
an output) and an input file, pilot 1 of site "a" holds a claimed attempt of her second job,
and bob, site "b" and pilot 2 (of site "b") are the others. A refusal is 401 (no valid
credentials), 403 (wrong role, site or scope) or 404 (another user's object, told apart from
a missing one by nothing); an allowed call is its success status (or 409 where the object's
state forbids the action, which it checks after the caller's rights).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from glidein_client.wire.schema import (
    AttemptRef,
    Finish,
    InputFile,
    JobSpec,
    Outcome,
    OutputFile,
    PilotRegister,
    PilotShape,
    Resources,
    Role,
    SyncRequest,
)
from glidein_server.http.app import API, Api, ServerConfig
from glidein_server.http.auth import hash_token
from glidein_server.store.files import FileStore
from glidein_server.store.sqlite import SqliteStore

from ..conftest import LiveServer

CASES = (
    "anonymous",
    "operator",
    "operator_without_code",
    "user",
    "other_user",
    "site",
    "other_site",
    "pilot",
    "other_pilot",
)
SHAPE = PilotShape(cpus=4, memory_mb=4000, disk_mb=1000, walltime_s=3600)
FREE = Resources(cpus=4, memory_mb=4000, gpus=0, disk_mb=1000)
UPLOAD = b"bytes a user uploads\n"
OUTPUT = b"what the job wrote\n"


def _routes() -> list[tuple[str, str]]:
    api = Api(SqliteStore(":memory:"), FileStore(Path("/nonexistent"), max_bytes=1), ServerConfig())  # no I/O
    return [(r.method, r.path) for r in api.routes]


# --- expectations ---------------------------------------------------------------------------


def public(status: int) -> dict[str, int]:
    return dict.fromkeys(CASES, status)


def for_users(ok: int, other_user: int | None = None, *, pilot: int = 403, other_pilot: int = 403) -> dict[str, int]:
    """Users and operators; another user's object is hidden (404)."""
    return {
        "anonymous": 401,
        "operator": ok,
        "operator_without_code": ok,
        "user": ok,
        "other_user": ok if other_user is None else other_user,
        "site": 403,
        "other_site": 403,
        "pilot": pilot,
        "other_pilot": other_pilot,
    }


def for_sites(ok: int) -> dict[str, int]:
    """Site clients (their own site only) and operators."""
    return {
        "anonymous": 401,
        "operator": ok,
        "operator_without_code": ok,
        "user": 403,
        "other_user": 403,
        "site": ok,
        "other_site": 403,
        "pilot": 403,
        "other_pilot": 403,
    }


def for_pilots(ok: int, other_pilot: int) -> dict[str, int]:
    """Pilots, each on its own claims only."""
    return {
        "anonymous": 401,
        "operator": 403,
        "operator_without_code": 403,
        "user": 403,
        "other_user": 403,
        "site": 403,
        "other_site": 403,
        "pilot": ok,
        "other_pilot": other_pilot,
    }


def for_operators(ok: int) -> dict[str, int]:
    """Operator actions: the operator token with a fresh one-time code."""
    return {
        "anonymous": 401,
        "operator": ok,
        "operator_without_code": 401,
        "user": 403,
        "other_user": 403,
        "site": 403,
        "other_site": 403,
        "pilot": 403,
        "other_pilot": 403,
    }


@dataclass(frozen=True)
class Entry:
    expect: dict[str, int]
    body: Callable[[World], Any] | None = None  # JSON body (or raw bytes)
    query: Callable[[World], dict[str, str]] | None = None
    headers: Callable[[World], dict[str, str]] | None = None
    sha256: str | None = None  # in the path, instead of alice's input


MATRIX: dict[tuple[str, str], Entry] = {
    ("GET", "/health"): Entry(public(200)),
    ("GET", "/openapi.json"): Entry(public(200)),
    ("POST", "/jobs"): Entry(for_users(201), body=lambda w: {"jobs": [{"argv": ["true"]}]}),
    ("GET", "/jobs"): Entry(for_users(200)),
    ("GET", "/jobs/{job_id}"): Entry(for_users(200, 404)),
    ("POST", "/jobs/{job_id}/cancel"): Entry(for_users(200, 404)),
    ("POST", "/jobs/{job_id}/retry"): Entry(for_users(409, 404)),  # a done job is not retried
    ("POST", "/jobs/{job_id}/hold"): Entry(for_users(409, 404), body=lambda w: {}),  # nor held
    ("POST", "/jobs/{job_id}/release"): Entry(for_users(409, 404), body=lambda w: {"reason": "r"}),  # nor released
    ("GET", "/jobs/{job_id}/attempts"): Entry(for_users(200, 404)),
    ("GET", "/jobs/{job_id}/outputs"): Entry(for_users(200, 404), query=lambda w: {"name": "out.txt"}),
    ("PUT", "/files/{sha256}"): Entry(for_users(201), body=lambda w: UPLOAD, sha256=hashlib.sha256(UPLOAD).hexdigest()),
    ("GET", "/files/{sha256}"): Entry(for_users(200, 404, pilot=200, other_pilot=404)),
    ("POST", "/sites/{site}/demand"): Entry(for_sites(200), body=lambda w: msgspec.to_builtins(SHAPE)),
    ("POST", "/sites/{site}/pilots"): Entry(for_sites(201), body=lambda w: {}),
    ("POST", "/sites/{site}/wait"): Entry(for_sites(200), body=lambda w: {"timeout_s": 0}),
    ("POST", "/sites/{site}/pilot-states"): Entry(for_sites(200), body=lambda w: {"states": {}}),
    ("PUT", "/sites/{site}/network"): Entry(for_sites(200), body=lambda w: {"network": "direct"}),
    ("GET", "/sites/{site}/staging"): Entry(for_sites(200)),
    ("POST", "/sites/{site}/staging"): Entry(for_sites(200), body=lambda w: {}),
    ("GET", "/sites/{site}/files/{sha256}"): Entry(for_sites(200)),
    ("POST", "/pilot/register"): Entry(
        for_pilots(200, 200),
        body=lambda w: msgspec.to_builtins(PilotRegister(resources=FREE, end_time=time.time() + 7200)),
    ),
    ("POST", "/pilot/sync"): Entry(
        for_pilots(200, 200), body=lambda w: {"free": msgspec.to_builtins(FREE), "lifetime_s": 7000}
    ),
    ("PUT", "/pilot/attempts/{attempt_id}/outputs"): Entry(  # another pilot's attempt: refused as not its own
        for_pilots(201, 409),
        body=lambda w: OUTPUT,
        query=lambda w: {"name": "out.txt"},
        headers=lambda w: {"X-Glidein-Lease": w.lease, "X-Glidein-Sha256": hashlib.sha256(OUTPUT).hexdigest()},
    ),
    ("POST", "/pilot/exit"): Entry(for_pilots(200, 200), body=lambda w: {"reason": "done"}),
    ("GET", "/summary"): Entry(for_users(200)),
    ("POST", "/admin/users"): Entry(for_operators(201), body=lambda w: {"name": "carol"}),
    ("DELETE", "/admin/users/{name}"): Entry(for_operators(200)),
    ("POST", "/admin/sites"): Entry(for_operators(201), body=lambda w: {"name": "c"}),
    ("DELETE", "/admin/sites/{name}"): Entry(for_operators(200)),
    ("POST", "/admin/sites/{name}/mode"): Entry(for_operators(200), body=lambda w: {"mode": "draining"}),
    ("POST", "/admin/sites/{name}/cap"): Entry(for_operators(200), body=lambda w: {"max_cpus": 8}),
    ("POST", "/admin/tokens"): Entry(
        for_operators(201), body=lambda w: {"role": "user", "subject": "carol", "scopes": ["read"]}
    ),
    ("GET", "/admin/tokens"): Entry(for_operators(200)),
    ("DELETE", "/admin/tokens/{token_id}"): Entry(for_operators(200)),
}


# --- the world ------------------------------------------------------------------------------


@dataclass
class World:
    live: LiveServer
    tokens: dict[str, str]
    code: Callable[[], str]
    job_id: int = 0
    sha256: str = ""
    attempt_id: int = 0
    lease: str = ""
    bob_token_id: str = ""
    seen: dict[str, int] = field(default_factory=dict)

    def path(self, template: str, sha256: str | None = None) -> str:
        return template.format(
            job_id=self.job_id,
            sha256=sha256 or self.sha256,
            site="a",
            attempt_id=self.attempt_id,
            name="bob",
            token_id=self.bob_token_id,
        )


async def make_world(live: LiveServer, tmp: Path) -> World:
    code = await live.enable_totp()
    tokens = {
        "operator": live.operator_token,
        "operator_without_code": live.operator_token,
        "user": await live.token(Role.USER, "alice"),
        "other_user": await live.token(Role.USER, "bob"),
        "site": await live.token(Role.SITE, "a"),
        "other_site": await live.token(Role.SITE, "b"),
    }
    w = World(live, tokens, code, bob_token_id=hash_token(tokens["other_user"])[:16])
    data = tmp / "data.txt"
    data.write_bytes(b"input of alice's jobs\n")
    async with live.api(tokens["user"]) as alice:
        w.sha256 = (await alice.upload_file(data)).sha256
        spec = JobSpec(
            argv=["cat", "data.txt"],
            inputs=[InputFile(name="data.txt", sha256=w.sha256, size=22)],
            outputs=["out.txt"],
            sites=["a"],
        )
        await alice.submit([spec, spec])
    grants = {}
    for case, site in (("pilot", "a"), ("other_pilot", "b")):
        async with live.api(tokens["site" if site == "a" else "other_site"]) as s:
            await s.demand(site, SHAPE)
            grants[case] = await s.new_pilot(site)
        tokens[case] = grants[case].token
        async with live.api(tokens[case]) as p:
            await p.register(PilotRegister(resources=FREE, end_time=time.time() + 7200))
    out = tmp / "out.txt"
    out.write_bytes(OUTPUT)
    async with live.api(tokens["pilot"]) as p:
        done, held = (await p.sync(SyncRequest(free=FREE, lifetime_s=7000))).jobs
        uploaded = await p.upload_output(done.attempt_id, done.lease, "out.txt", out)
        await p.sync(
            SyncRequest(
                free=FREE,
                lifetime_s=7000,
                started=[AttemptRef(attempt_id=done.attempt_id, lease=done.lease)],
                finished=[
                    Finish(
                        attempt_id=done.attempt_id,
                        lease=done.lease,
                        outcome=Outcome.DONE,
                        exit_code=0,
                        outputs=[OutputFile(name="out.txt", sha256=uploaded.sha256, size=uploaded.size)],
                    )
                ],
            )
        )
    w.job_id, w.attempt_id, w.lease = done.job_id, held.attempt_id, held.lease
    return w


async def call(w: World, method: str, template: str, entry: Entry, case: str) -> int:
    headers = dict(entry.headers(w) if entry.headers else {})
    if case in w.tokens:
        headers["Authorization"] = f"Bearer {w.tokens[case]}"
    if case == "operator":
        headers["X-Glidein-TOTP"] = w.code()
    body = entry.body(w) if entry.body else None
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    url = f"{w.live.url}{API}{w.path(template, entry.sha256)}"
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, url, params=entry.query(w) if entry.query else None, headers=headers, **kwargs) as resp,
    ):
        await resp.read()
        return resp.status


@pytest.mark.parametrize(("method", "path"), _routes(), ids=[f"{m} {p}" for m, p in _routes()])
async def test_route_allows_and_refuses_as_intended(
    live_server: LiveServer, tmp_path: Path, method: str, path: str
) -> None:
    entry = MATRIX.get((method, path))
    assert entry is not None, f"{method} {path} has no entry in the access matrix: add one to MATRIX"
    assert set(entry.expect) == set(CASES)
    w = await make_world(live_server, tmp_path)
    # Refusals first: they change nothing, so the allowed calls after them see the world as built.
    order = sorted(CASES, key=lambda c: (entry.expect[c] < 400, c != "user"))
    got = {case: await call(w, method, path, entry, case) for case in order}
    assert got == entry.expect, f"{method} {path}: " + ", ".join(
        f"{c} got {got[c]} (expected {entry.expect[c]})" for c in CASES if got[c] != entry.expect[c]
    )


def test_matrix_has_no_entry_for_a_route_that_is_gone() -> None:
    assert set(MATRIX) - set(_routes()) == set()
