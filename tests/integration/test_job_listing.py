"""The job list over real HTTP: keyset pages (``after``, ``order=desc``, ``counts=0``) and plain errors."""

from __future__ import annotations

import aiohttp
import pytest

from glidein_client.user.session import list_all, pages
from glidein_client.wire.errors import ValidationError
from glidein_client.wire.schema import JobSpec, Role

from ..conftest import LiveServer


async def test_keyset_pages_over_http_list_every_job_once_newest_first_too(live_server: LiveServer) -> None:
    async with live_server.api(await live_server.token(Role.USER, "alice")) as api:
        ids = await api.submit([JobSpec(argv=["true"], labels={"ds": "x" if i % 2 else "y"}) for i in range(25)])
        await api.cancel(ids[3])
        got = [p async for p in pages(api, state=None, label=None, size=7)]
        assert [len(p.jobs) for p in got] == [7, 7, 7, 4]
        assert [j.id for p in got for j in p.jobs] == ids
        assert got[0].counts == {"idle": 24, "cancelled": 1} and all(p.counts == {} for p in got[1:])
        newest = [
            j.id
            for p in [p async for p in pages(api, state="idle", label="ds=x", newest_first=True, size=5)]
            for j in p.jobs
        ]
        assert newest == [i for i in reversed(ids[1::2]) if i != ids[3]]
        everything = await list_all(api, state=None, label="ds=y")
        assert [j.id for j in everything.jobs] == ids[0::2] and everything.counts == {"idle": 13}
        page = await api.list_jobs(after=ids[20], limit=100)  # an old client's call still gets its counts
        assert [j.id for j in page.jobs] == ids[21:] and sum(page.counts.values()) == 25
        for params, words in (
            ({"limit": -1}, "limit must be 0 or more"),
            ({"offset": -5}, "offset must be 0 or more"),
            ({"order": "up"}, "order must be asc or desc"),
            ({"after": "x"}, "not a whole number"),
            ({"counts": "yes"}, "counts must be 1 or 0"),
        ):
            with pytest.raises(ValidationError, match=words):
                await api._json("GET", "/jobs", dict, params=params)


async def test_old_clients_get_the_listing_they_always_did(live_server: LiveServer) -> None:
    """A client that knows only limit and offset gets the same answer, with no new fields in it."""
    token = await live_server.token(Role.USER, "bob")
    async with live_server.api(token) as api:
        ids = await api.submit([JobSpec(argv=["true"]) for _ in range(5)])
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"{live_server.url}/api/v1/jobs",
            params={"limit": "2", "offset": "2"},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp,
    ):
        body = await resp.json()
    assert resp.status == 200 and set(body) == {"jobs", "counts"}
    assert [j["id"] for j in body["jobs"]] == ids[2:4] and body["counts"] == {"idle": 5}
