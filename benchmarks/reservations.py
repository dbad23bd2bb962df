"""What bounded reservations cost a claim: server CPU per claiming sync with and without them.

Run with ``python -m benchmarks.reservations [--jobs 20000] [--backends sqlite,postgres]``. For
each queue below, two stores are filled alike (``--jobs`` idle jobs), one with reservations off (the
baseline) and one with the server's defaults; then pilots with one free core claim, in rounds that
alternate which store goes first, and each round's CPU per claim is taken: the server process's
(``time.process_time``, the SQLite worker thread included) plus, for PostgreSQL, that of the
backends serving the store (``psutil``). Prints the medians (extra: the median of each round's
difference) and writes benchmarks/results/reservations.json.

Queues: only single-core jobs (the read finds no multicore shape); 1 % 4-core jobs, just
submitted (it reads them, none waits long enough); 1 % 4-core jobs waiting past ``after_s``, each
already held by another pilot (it reads them and finds them taken). The cost in efficiency (cores
held idle while they gather) is the simulator's figure: ``glidein-sim examples/sim/cms-multicore.toml``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from glidein_client.wire.schema import JobSpec, PilotRegister, Resources, SyncRequest
from glidein_server.policy.reservation import ReservationPolicy
from glidein_server.store.postgres import PostgresStore
from glidein_server.store.reservations import PER_SHAPE
from glidein_server.store.sqlite import SqliteStore

RESULTS = Path(__file__).resolve().parent / "results"
NOW = 1_000_000.0
POLICY = ReservationPolicy()  # the server's defaults: 30 min, 1 h
PILOT = Resources(cpus=8, memory_mb=16_000, disk_mb=100_000)
ONE_FREE = Resources(cpus=1, memory_mb=16_000, disk_mb=100_000)
SINGLE = JobSpec(argv=["true"], walltime_s=3600, memory_mb=1000)
FOUR = JobSpec(argv=["true"], cpus=4, walltime_s=3600, memory_mb=1000)
QUEUES = ("single-core only", "4-core jobs, young", "4-core jobs starving, held")
Store = SqliteStore | PostgresStore


async def fill(store: Store, queue: str, jobs: int) -> None:
    big = 0 if queue == QUEUES[0] else jobs // 100
    submitted = NOW - 2 * POLICY.after_s if queue == QUEUES[2] else NOW
    await store.add_jobs("alice", [FOUR] * big, submitted)
    for start in range(0, jobs - big, 10_000):
        await store.add_jobs("alice", [SINGLE] * min(10_000, jobs - big - start), submitted)
    if queue == QUEUES[2]:  # the starving jobs a claim reads (the first few of their shape) have their pilots
        for _ in range(PER_SHAPE):
            pid = await pilot(store)
            await store.sync(pid, SyncRequest(free=ONE_FREE, lifetime_s=80_000), NOW, 3600)


async def pilot(store: Store) -> int:
    pid = await store.new_pilot("s", NOW)
    await store.register_pilot(pid, PilotRegister(resources=PILOT, end_time=NOW + 86_400), NOW)
    return pid


def cpu_s(postmaster: psutil.Process | None, store: Store) -> float:
    """This process's CPU seconds, and those of the PostgreSQL backends serving ``store`` (not
    autovacuum's or the other store's)."""
    total = time.process_time()
    if postmaster is not None and isinstance(store, PostgresStore):
        database = store.url.rsplit("/", 1)[1]
        for proc in postmaster.children():
            with contextlib.suppress(psutil.Error):
                if f" {database} " in " ".join(proc.cmdline()) + " ":
                    t = proc.cpu_times()
                    total += t.user + t.system
    return total


async def claims_cpu_ms(store: Store, pilots: list[int], postmaster: psutil.Process | None, at: float) -> float:
    before = cpu_s(postmaster, store)
    for pid in pilots:
        got = await store.sync(pid, SyncRequest(free=ONE_FREE, lifetime_s=80_000), at, 3600)
        assert len(got.jobs) == 1, "each claim takes one single-core job"
    return (cpu_s(postmaster, store) - before) * 1000 / len(pilots)


async def compare(
    opener: Iterator[Store], queue: str, jobs: int, rounds: int, claimers: int, postmaster: psutil.Process | None
) -> dict[str, float]:
    off, on = next(opener), next(opener)
    off.reservation, on.reservation = None, POLICY
    try:
        for s in (off, on):
            await s.open()
            await fill(s, queue, jobs)
        pilots = {id(s): [await pilot(s) for _ in range(claimers)] for s in (off, on)}
        for s in (off, on):  # no autovacuum in the middle of the rounds
            if isinstance(s, PostgresStore):
                async with s.pool.acquire() as con:
                    await con.execute("VACUUM ANALYZE")
        per: dict[str, list[float]] = {"off": [], "on": []}
        for r in range(rounds):
            order = [("off", off), ("on", on)] if r % 2 == 0 else [("on", on), ("off", off)]
            for name, s in order:
                per[name].append(await claims_cpu_ms(s, pilots[id(s)], postmaster, NOW + 1 + r))
        held = len(await on.reservations(NOW + rounds))
    finally:
        for s in (off, on):
            await s.close()
    off_ms, on_ms = statistics.median(per["off"]), statistics.median(per["on"])
    extra = statistics.median(b - a for a, b in zip(per["off"], per["on"], strict=True))  # of the pairs
    return {"off_ms": off_ms, "on_ms": on_ms, "extra_ms": extra, "ratio": on_ms / off_ms, "held": held}


def sqlite_stores(tmp: Path) -> Iterator[Store]:
    n = 0
    while True:
        n += 1
        yield SqliteStore(str(tmp / f"glidein{n}.db"))


async def run(args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="glidein-res-") as tmp:
        if "sqlite" in args.backends:
            stores = sqlite_stores(Path(tmp))
            out["sqlite"] = {q: await compare(stores, q, args.jobs, args.rounds, args.claimers, None) for q in QUEUES}
        if "postgres" in args.backends:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # noqa: ASYNC240
            from tests.infra.postgres import running_postgres

            with running_postgres() as pg:
                postmaster = psutil.Process(int((pg.root / "data" / "postmaster.pid").read_text().split()[0]))
                n = iter(range(1_000_000))

                def pg_stores() -> Iterator[Store]:
                    while True:
                        name = f"bench{next(n)}"
                        pg.run("createdb", name)
                        yield PostgresStore(pg.url(name))

                stores = pg_stores()
                out["postgres"] = {
                    q: await compare(stores, q, args.jobs, args.rounds, args.claimers, postmaster) for q in QUEUES
                }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=6, help="rounds per store, alternating which goes first")
    ap.add_argument("--claimers", type=int, default=100, help="pilots claiming one job each per round")
    ap.add_argument("--backends", default="sqlite,postgres")
    args = ap.parse_args()
    args.backends = args.backends.split(",")
    results = asyncio.run(run(args))
    print(f"server CPU per claiming sync (ms, median of {args.rounds} rounds of {args.claimers}), {args.jobs:,} jobs")
    print(f"{'backend':10}{'queue':30}{'off':>8}{'on':>8}{'extra':>8}{'ratio':>7}")
    for backend, rows in results.items():
        for queue, r in rows.items():
            print(f"{backend:10}{queue:30}{r['off_ms']:>8.3f}{r['on_ms']:>8.3f}{r['extra_ms']:>8.3f}{r['ratio']:>7.2f}")
    RESULTS.mkdir(exist_ok=True)
    doc = {"jobs": args.jobs, "rounds": args.rounds, "claimers": args.claimers, "host": platform.node()}
    (RESULTS / "reservations.json").write_text(json.dumps({**doc, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
