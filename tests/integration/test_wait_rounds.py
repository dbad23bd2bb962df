"""What ``glidein wait`` costs the server per round, counted at a real server through a counting proxy:
a round without ids is one request answered from the kept counts (no ids asked, no job read) whether
the user has 100 jobs or 2,000; what changed is read, not the queue; a wait on ids asks for them again
only when something changed; and the real command reports only what finished while it waited."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from glidein_client.user.cli import parse_args
from glidein_client.user.waiting import IdsWatch, MineWatch
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobSpec, Role


@dataclass
class Asked:
    path: str
    ids: int  # ids named in the query
    jobs: int  # jobs in the answer


@dataclass
class CountingProxy:
    """Forwards every request to the server and notes what each asked and how many jobs came back."""

    upstream: str
    asked: list[Asked] = field(default_factory=list)
    url: str = ""
    read_jobs: asyncio.Event = field(default_factory=asyncio.Event)  # set once an answer held jobs

    async def handle(self, request: web.Request) -> web.Response:
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method,
                self.upstream + request.rel_url.path_qs,
                headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
                data=await request.read(),
            ) as resp,
        ):
            body = await resp.read()
        ids = request.query.get("ids", "")
        jobs = 0
        if request.method == "GET" and request.path.endswith("/jobs") and resp.status == 200:
            jobs = len(json.loads(body)["jobs"])
        self.asked.append(Asked(request.path, len(ids.split(",")) if ids else 0, jobs))
        if jobs:
            self.read_jobs.set()
        return web.Response(body=body, status=resp.status, content_type=resp.content_type)

    def take(self) -> list[Asked]:
        taken, self.asked = self.asked, []
        return taken


@pytest.fixture
async def proxy(live_server: Any) -> AsyncIterator[CountingProxy]:
    counting = CountingProxy(live_server.url)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", counting.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    counting.url = f"http://127.0.0.1:{port}"
    try:
        yield counting
    finally:
        await runner.cleanup()


def idle_jobs(n: int) -> list[JobSpec]:
    return [JobSpec(argv=["true"], walltime_s=60) for _ in range(n)]  # no pilot runs them


async def steady_rounds(watch: MineWatch | IdsWatch, proxy: CountingProxy, rounds: int) -> list[list[Asked]]:
    out = []
    for _ in range(rounds):
        await watch.poll()
        out.append(proxy.take())
    return out


async def test_a_round_costs_what_changed_not_what_is_queued(
    live_server: Any, proxy: CountingProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))  # no last submit
    per_user: dict[int, list[list[Asked]]] = {}
    for n in (100, 2000):
        token = await live_server.token(Role.USER, f"user{n}")
        async with live_server.api(token) as direct:
            await direct.submit(idle_jobs(n))
        async with ApiClient(proxy.url, token) as api:
            watch = MineWatch(api, proxy.url)
            assert await watch.start()
            first = await watch.poll()
            assert first.counts == {"idle": n}
            proxy.take()
            per_user[n] = await steady_rounds(watch, proxy, 3)
    for n, rounds in per_user.items():  # the same for 100 and 2,000 jobs: the kept counts, once
        assert [[(a.ids, a.jobs) for a in r] for r in rounds] == [[(0, 0)]] * 3, (n, rounds)

    token = await live_server.token(Role.USER, "user2000")
    async with live_server.api(token) as direct, ApiClient(proxy.url, token) as api:
        mine = (await direct.list_jobs(limit=3000)).jobs
        watch = MineWatch(api, proxy.url)
        assert await watch.start()
        await watch.poll()
        proxy.take()
        for job in mine[:5]:
            await direct.cancel(job.id)
        for job in mine[5:8]:
            await direct.hold(job.id, "input not ready")
        snap = await watch.poll()
        asked = proxy.take()
        assert snap.counts == {"idle": 1992, "held": 3, "cancelled": 5}
        assert sum(a.ids for a in asked) == 0 and sum(a.jobs for a in asked) == 3, asked  # the held ones
        assert snap.notes == {"held by user2000: input not ready": [j.id for j in mine[5:8]][::-1]}
        await direct.submit(idle_jobs(7))
        snap = await watch.poll()
        asked = proxy.take()
        assert snap.counts["idle"] == 1999 and sum(a.jobs for a in asked) == 7, asked  # the new ones
        assert (await watch.finish(snap)).bad == [j.id for j in mine[:5]]

        ids = [j.id for j in mine]
        by_ids = IdsWatch(api, ids, None)
        snap = await by_ids.poll()
        assert snap.counts == {"idle": 1992, "held": 3, "cancelled": 5}
        assert sum(a.ids for a in proxy.take()) == len(ids)
        rounds = await steady_rounds(by_ids, proxy, 2)
        assert [[(a.ids, a.jobs) for a in r] for r in rounds] == [[(0, 0)]] * 2
        await direct.cancel(mine[10].id)
        snap = await by_ids.poll()
        assert snap.counts == {"idle": 1991, "held": 3, "cancelled": 6}
        assert sum(a.ids for a in proxy.take()) == len(ids) - 5  # not the jobs known to be finished


async def wait_command(proxy: CountingProxy, token_file: Path, *argv: str) -> int:
    args = parse_args(["--json", "--url", proxy.url, "--token-file", str(token_file), "wait", *argv])
    code: int = await args.handler(args)
    return code


async def test_wait_without_ids_reports_what_finished_while_it_waited(
    live_server: Any,
    proxy: CountingProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    token = await live_server.token(Role.USER, "bea")
    token_file = live_server.write_secret("bea.token", token)
    async with live_server.api(token) as direct:
        (old,) = await direct.submit(idle_jobs(1))
        await direct.cancel(old)  # finished before the wait, before the first job waited for
        ids = await direct.submit(idle_jobs(10))
        await direct.cancel(ids[4])  # finished before the wait, among the jobs waited for
        waiting = asyncio.create_task(wait_command(proxy, token_file, "--timeout", "30s"))
        await asyncio.wait_for(proxy.read_jobs.wait(), 10)  # its first round read why the jobs wait
        await asyncio.sleep(0.3)
        for job_id in [*ids[:4], *ids[5:]]:
            await direct.cancel(job_id)
        code = await waiting
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["timed_out"] is False
    assert report["counts"] == {"cancelled": 9} and report["total"] == 9
    assert report["failed_ids"] == [*ids[:4], *ids[5:]]
