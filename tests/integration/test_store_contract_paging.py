"""Keyset paging of the job list, one contract for both stores (SQLite and a real PostgreSQL).

A listing read page by page, each page starting past the last id of the one before, sees every job
that matched throughout exactly once, in id order (or newest first), while jobs are submitted,
claimed, cancelled and purged between its pages; an offset-paged listing skips or repeats jobs then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable

import pytest

from glidein_client.wire.schema import JobSpec, PilotRegister, Resources, SyncRequest
from glidein_server.store.base import JobFilter, Store

NOW = 1_000_000.0
LEASE_S = 600.0
FREE = Resources(cpus=2, memory_mb=16_000, disk_mb=100_000)


def job(i: int) -> JobSpec:
    return JobSpec(argv=["true"], memory_mb=1000, walltime_s=600, labels={"ds": "a" if i % 3 else "b", "k": str(i % 2)})


async def read_all(
    store: Store, flt: JobFilter, between: Callable[[int], Awaitable[None]]
) -> tuple[list[int], list[dict[str, int]]]:
    """Every page of ``flt`` (keyset), calling ``between`` after each; the ids and each page's counts."""
    ids: list[int] = []
    counts: list[dict[str, int]] = []
    after: int | None = None
    for n in range(1000):
        page, c = await store.list_jobs(dataclasses.replace(flt, after=after, counts=n == 0))
        counts.append(c)
        ids += [j.id for j in page]
        if len(page) < flt.limit:
            return ids, counts
        after = page[-1].id
        await between(n)
    raise AssertionError("the listing did not end")


async def churn(store: Store, ids: list[int]) -> Callable[[int], Awaitable[None]]:
    """Between pages: submit jobs (the first few times), claim two, cancel one near the front and purge
    the cancelled ones."""
    pid = await store.new_pilot("a", NOW)
    res = Resources(cpus=64, memory_mb=512_000, disk_mb=1_000_000)
    await store.register_pilot(pid, PilotRegister(resources=res, end_time=NOW + 86_400), NOW)
    seq = iter(range(1, 1000))

    async def between(n: int) -> None:
        if n < 6:  # a few pages' worth, so that the listing ends
            ids.extend(await store.add_jobs("alice", [job(100 + 2 * n + i) for i in range(2)], NOW))
        await store.sync(pid, SyncRequest(free=FREE, lifetime_s=80_000, seq=next(seq)), NOW, LEASE_S)
        await store.cancel_job(ids[n], NOW)
        await store.purge_finished(NOW + 1, 10)

    return between


@pytest.mark.parametrize(
    "flt",
    [
        JobFilter(limit=4),
        JobFilter(owner="alice", limit=3),
        JobFilter(label=("ds", "a"), limit=4),
        JobFilter(label=("ds", "a"), labels=(("k", "1"),), limit=2),
        JobFilter(limit=4, newest_first=True),
        JobFilter(label=("ds", "a"), limit=3, newest_first=True),
    ],
    ids=["all", "owner", "label", "two-labels", "newest-first", "label-newest-first"],
)
async def test_keyset_pages_skip_and_repeat_no_job_while_the_queue_changes(store: Store, flt: JobFilter) -> None:
    ids = await store.add_jobs("alice", [job(i) for i in range(30)], NOW)
    first = list(ids)
    seen, counts = await read_all(store, flt, await churn(store, ids))
    assert len(seen) == len(set(seen)), "a job was listed twice"
    assert seen == sorted(seen, reverse=flt.newest_first)
    remaining = {j.id: j for j in (await store.list_jobs(JobFilter(limit=10_000)))[0]}
    matching = {i for i in first if i in remaining and _matches(remaining[i].spec, flt)}
    listed_then_gone = set(seen) - set(remaining)  # purged after their page was read
    assert matching <= set(seen), f"jobs skipped: {sorted(matching - set(seen))}"
    assert set(seen) - listed_then_gone <= {i for i in remaining if _matches(remaining[i].spec, flt)}
    if flt.newest_first:  # jobs submitted after the first page lie before it, so are not listed
        assert not set(seen) - set(first)
    else:  # and when the listing is in id order, they come at its end
        added = {i for i in set(ids) - set(first) if i in remaining and _matches(remaining[i].spec, flt)}
        assert added and added <= set(seen)
    assert counts[0] and all(c == {} for c in counts[1:])  # the counts once, with the first page


async def test_a_state_filtered_listing_lists_each_job_that_kept_its_state_once(store: Store) -> None:
    """Jobs leave 'idle' between pages (claimed, cancelled): those that stayed are all listed, once."""
    ids = await store.add_jobs("alice", [job(i) for i in range(40)], NOW)
    first = list(ids)
    seen, _ = await read_all(store, JobFilter(state="idle", limit=5), await churn(store, ids))
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    still_idle = {j.id for j in (await store.list_jobs(JobFilter(state="idle", limit=10_000)))[0]}
    assert still_idle & set(first) <= set(seen)


async def test_offset_paging_still_works_and_an_after_past_the_end_is_empty(store: Store) -> None:
    ids = await store.add_jobs("alice", [job(i) for i in range(6)], NOW)
    page, counts = await store.list_jobs(JobFilter(limit=2, offset=2))
    assert [j.id for j in page] == ids[2:4] and counts == {"idle": 6}
    page, _ = await store.list_jobs(JobFilter(limit=2, after=ids[1], offset=1))  # offset counts past ``after``
    assert [j.id for j in page] == ids[3:5]
    page, _ = await store.list_jobs(JobFilter(limit=2, newest_first=True))
    assert [j.id for j in page] == [ids[5], ids[4]]
    page, counts = await store.list_jobs(JobFilter(after=ids[-1]))
    assert page == [] and counts == {"idle": 6}
    page, _ = await store.list_jobs(JobFilter(after=ids[0], newest_first=True, label=("ds", "b")))
    assert page == []
    page, _ = await store.list_jobs(JobFilter(after=ids[4], newest_first=True, label=("ds", "b")))
    assert [j.id for j in page] == [ids[3], ids[0]]


def _matches(spec: JobSpec, flt: JobFilter) -> bool:
    return (flt.owner in (None, "alice")) and all(spec.labels.get(k) == v for k, v in flt.all_labels)
