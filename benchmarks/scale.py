"""The queue at scale, through the HTTP API, on each store backend: `python -m benchmarks.scale`.

For SQLite and PostgreSQL (a throw-away cluster started here, as the tests do, unless
``--postgres URL`` names one): submit ``--jobs`` idle jobs (mixed 1- and 4-core, with labels),
time the demand query, ramp 8-core pilots with 32 claiming at once (first-claim latency, claims
per second), heartbeat syncs of every pilot, finish-and-claim rounds, one page of ``glidein
status``, ``/summary`` and a label filter; then the server's RSS and the database's size. The
server's CPU time per submitted job, per claiming sync, per heartbeat and per finish-and-claim
sync is printed too (on PostgreSQL also the database cluster's, and the two together): on a shared
machine it varies far less than the rates. On PostgreSQL a second replica then starts on
the same database, and fresh pilots claim first through one replica, then spread over both. The
server runs as a real ``glidein-server serve`` process. Its pilots are this process's: each sends
the requests a real pilot sends, with its own token over its own kept-alive connection, through the
light client of :mod:`benchmarks.pilot_http`, which takes far less of the server's cores per sync
than an aiohttp session per pilot did (``client_cpu_ms_per_*`` is this process's CPU per sync).
Prints a table and writes benchmarks/results/scale.json; the targets are printed beside each figure, and the SQLite and
PostgreSQL columns of one run compare the backends on the same machine and load.

``--phases submit`` times the bulk submit alone (on PostgreSQL with the CPU of the database's own
processes per job too). ``--against REF`` also runs the server as it was at git commit REF, and
``--rounds N`` repeats both, alternating which goes first; the table then gives each figure's median
over the rounds and ``scale.json`` every run. ``--users N`` submits the jobs as N users, their
requests in turn, so that every claim weighs the users' fair shares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import psutil

from benchmarks.fleet import SHAPE, Fleet
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import MAX_JOBS_PER_REQUEST, JobSpec, Role
from glidein_server.server import mint_token, open_store
from glidein_server.settings import ServerSettings, StateDir

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: name: (target, "min" if the figure must be at least the target, "max" if at most)
TARGETS: dict[str, tuple[float, str]] = {
    "submit_jobs_per_s": (50_000, "min"),
    "demand_p99_ms": (20, "max"),
    "claim_jobs_per_s": (2_000, "min"),
    "first_claim_p99_ms": (50, "max"),
    "heartbeat_syncs_per_s": (3_000, "min"),
    "status_page_p99_ms": (100, "max"),
    "summary_p99_ms": (100, "max"),
    "label_filter_p99_ms": (100, "max"),
    "server_rss_mb": (1024, "max"),
}


def quantile_ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def p99_ms(samples: list[float]) -> float:
    return quantile_ms(samples, 0.99)


def spread(r: dict[str, float], name: str, samples: list[float]) -> None:
    """Record the p50, p90, p99 and maximum of ``samples`` (seconds) as ``name_p50_ms`` and so on."""
    for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
        r[f"{name}_{label}_ms"] = quantile_ms(samples, q)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def timed(n: int, fn: Callable[[], Awaitable[Any]]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


@contextlib.asynccontextmanager
async def serving(state: StateDir, log: Path, tree: Path | None = None) -> AsyncIterator[tuple[str, psutil.Process]]:
    """A ``glidein-server serve`` process: this checkout's, or the one of the source ``tree``."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree)} if tree else None
    with open(log, "wb") as out:  # noqa: ASYNC230 - handed to the child
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "glidein_server.cli", "serve", "--dir", str(state.root), "--port", str(port)),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=tree,
        )
    try:
        for _ in range(300):
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            await asyncio.sleep(0.1)
        yield f"http://127.0.0.1:{port}", psutil.Process(proc.pid)
    finally:
        proc.terminate()
        await proc.wait()


def job_specs(n: int) -> list[JobSpec]:
    return [
        JobSpec(
            argv=["true"],
            cpus=4 if i % 4 == 0 else 1,
            memory_mb=8000 if i % 4 == 0 else 2000,
            walltime_s=3600,
            labels={"dataset": f"ds{i % 50}", "type": "sim" if i % 3 else "reco"},
        )
        for i in range(n)
    ]


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def database_cpu_s(postmaster: psutil.Process | None) -> float:
    """The CPU seconds of a PostgreSQL cluster: its postmaster, live processes and those already ended."""
    if postmaster is None:
        return 0.0
    t = postmaster.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in postmaster.children():
        with contextlib.suppress(psutil.Error):
            total += cpu_s(child)
    return float(total)


class Cpu:
    """The server's CPU and the database cluster's (on PostgreSQL) since the last reading, per operation."""

    def __init__(self, server: psutil.Process, postmaster: psutil.Process | None) -> None:
        self.server, self.postmaster = server, postmaster
        self.at = self.now()

    def now(self) -> tuple[float, float, float]:
        return cpu_s(self.server), database_cpu_s(self.postmaster), time.process_time()

    def per(self, r: dict[str, float], what: str, n: int) -> None:
        """Record the CPU spent since the last call, in ms per ``what`` (``n`` of them): the server's,
        the database's and this benchmark's own (its pilots' HTTP client, on the same cores)."""
        (s0, d0, b0), (s1, d1, b1) = self.at, self.now()
        self.at = (s1, d1, b1)
        r[f"server_cpu_ms_per_{what}"] = round(1000 * (s1 - s0) / n, 3)
        r[f"client_cpu_ms_per_{what}"] = round(1000 * (b1 - b0) / n, 3)
        if self.postmaster is not None:
            r[f"database_cpu_ms_per_{what}"] = round(1000 * (d1 - d0) / n, 3)
            r[f"total_cpu_ms_per_{what}"] = round(1000 * (s1 - s0 + d1 - d0) / n, 3)


class Run:
    """One run's setting: which phases, the server's source tree (None: this checkout), its database cluster."""

    def __init__(self, phases: str, tree: Path | None, postmaster: psutil.Process | None, users: int = 1) -> None:
        self.phases, self.tree, self.postmaster, self.users = phases, tree, postmaster, users


async def bench_state(root: Path, **settings: Any) -> tuple[StateDir, str, str]:
    """A server's state directory for a benchmark (plain HTTP on loopback, long leases, no rate
    limits, and ``settings``), with a user's and a site's token."""
    state = StateDir(root)
    state.write(
        ServerSettings(
            insecure_http=True,
            lease_s=600,
            heartbeat_s=60,
            pilot_timeout_s=1800,
            **{f"rate_{r}_per_s": 0.0 for r in ("operator", "user", "site", "pilot", "anonymous")},
            **settings,
        )
    )
    store = open_store(state, state.load())
    await store.open()
    user = await mint_token(store, Role.USER, "bench")
    site = await mint_token(store, Role.SITE, "bench")
    await store.close()
    return state, user, site


#: Run by the code of the source tree under test: its state directory with the tokens of ``users``
#: users (bench, bench2, ...) and of a site.
TREE_STATE = """
import asyncio, json, sys
from pathlib import Path
from benchmarks.scale import bench_state
from glidein_client.wire.schema import Role
from glidein_server.server import mint_token, open_store

async def main() -> None:
    state, user, site = await bench_state(Path(sys.argv[1]), database=sys.argv[2])
    store = open_store(state, state.load())
    await store.open()
    more = [await mint_token(store, Role.USER, f"bench{i}") for i in range(2, int(sys.argv[3]) + 1)]
    await store.close()
    print(json.dumps([[user, *more], site]))

asyncio.run(main())
"""


async def tree_state(tree: Path | None, root: Path, database: str, users: int) -> tuple[StateDir, list[str], str]:
    """:func:`bench_state` made by the code of the source ``tree`` (None: this checkout), so that the
    database has that code's schema and indexes, not this checkout's; with ``users`` users' tokens."""
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", TREE_STATE, str(root), database, str(users)),
        cwd=tree or ROOT,
        env={**os.environ, "PYTHONPATH": str(tree or ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"setting up the state with the code of {tree or ROOT} failed")
    tokens, site = json.loads(out.decode().strip().splitlines()[-1])
    return StateDir(root), tokens, site


async def run_backend(name: str, database: str, jobs: int, tmp: Path, replicas: bool, how: Run) -> dict[str, float]:
    state, users, site = await tree_state(how.tree, tmp / name, database, how.users)
    user = users[0]
    r: dict[str, float] = {}
    async with serving(state, tmp / f"{name}.log", how.tree) as (url, server):
        async with contextlib.AsyncExitStack() as clients:
            apis = [await clients.enter_async_context(ApiClient(url, u)) for u in users]
            specs = job_specs(jobs)
            t0, c0, d0 = time.perf_counter(), cpu_s(server), database_cpu_s(how.postmaster)
            for n, i in enumerate(range(0, jobs, MAX_JOBS_PER_REQUEST)):  # the users' requests in turn
                await apis[n % len(apis)].submit(specs[i : i + MAX_JOBS_PER_REQUEST])
            r["submit_jobs_per_s"] = round(jobs / (time.perf_counter() - t0))
            r["server_cpu_us_per_submitted_job"] = round(1e6 * (cpu_s(server) - c0) / jobs, 1)
            if how.postmaster is not None:
                r["database_cpu_us_per_submitted_job"] = round(1e6 * (database_cpu_s(how.postmaster) - d0) / jobs, 1)
        if how.phases == "submit":
            r["load_avg_1m"] = round(os.getloadavg()[0], 1)
            return r
        async with ApiClient(url, site) as sapi:
            r["demand_p99_ms"] = p99_ms(await timed(200, lambda: sapi.demand("bench", SHAPE)))
            fleet = await Fleet.start(sapi, [url], max(32, min(6250, jobs // 16)))
        try:
            cpu = Cpu(server, how.postmaster)
            claimed, ramp_s = await fleet.claim()
            r["pilots"] = len(fleet.syncs)
            r["claimed_jobs"] = claimed
            r["claim_jobs_per_s"] = round(claimed / ramp_s)
            spread(r, "first_claim", fleet.first)
            cpu.per(r, "claim_sync", len(fleet.syncs))
            r["heartbeat_syncs_per_s"] = round(len(fleet.syncs) / await fleet.heartbeats())
            cpu.per(r, "heartbeat", len(fleet.syncs))
            finished, seconds = await fleet.finish_and_claim(3)
            r["finish_and_claim_jobs_per_s"] = round(finished / seconds)
            cpu.per(r, "finish_and_claim_sync", 3 * min(len(fleet.syncs), 512))
        finally:
            await fleet.close()
        async with ApiClient(url, user) as api:
            r["status_page_p99_ms"] = p99_ms(await timed(20, lambda: api.list_jobs(limit=100)))
            r["summary_p99_ms"] = p99_ms(await timed(20, api.summary))
            r["label_filter_p99_ms"] = p99_ms(await timed(20, lambda: api.list_jobs(label="dataset=ds7", limit=100)))
        r["server_rss_mb"] = round(server.memory_info().rss / 2**20)
        if replicas:
            r.update(await replica_claims(state, tmp, url, site, min(512, max(32, jobs // 64)), how.tree))
    r["database_mb"] = round(await database_mb(state, database), 1)
    r["load_avg_1m"] = round(os.getloadavg()[0], 1)
    return r


async def replica_claims(
    state: StateDir, tmp: Path, url: str, site: str, pilots: int, tree: Path | None
) -> dict[str, float]:
    """The claim rate of fresh pilots on one replica, then of as many spread over two, in one run."""
    out: dict[str, float] = {}
    async with serving(state, tmp / "replica2.log", tree) as (url2, _), ApiClient(url, site) as sapi:
        for key, urls in (("one_replica_claim_jobs_per_s", [url]), ("two_replicas_claim_jobs_per_s", [url, url2])):
            fleet = await Fleet.start(sapi, urls, pilots)
            try:
                claimed, seconds = await fleet.claim()
                out[key] = round(claimed / seconds)
            finally:
                await fleet.close()
    return out


async def database_mb(state: StateDir, database: str) -> float:
    if not database.startswith("postgres"):
        path = state.database(state.load())
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20
    import asyncpg

    con = await asyncpg.connect(database)
    try:
        return float(await con.fetchval("SELECT pg_database_size(current_database())")) / 2**20
    finally:
        await con.close()


def table(results: dict[str, dict[str, float]]) -> str:
    names = list(results)
    width = max(14, *(len(n) + 2 for n in names))
    keys = list(dict.fromkeys(k for r in results.values() for k in r))
    lines = [f"{'measure':40}" + "".join(f"{n:>{width}}" for n in names) + "   target"]
    for k in keys:
        target = TARGETS.get(k)
        mark = f"   {'>=' if target[1] == 'min' else '<='} {target[0]:g}" if target else ""
        cells = "".join(f"{results[n][k]:>{width}g}" if k in results[n] else f"{'-':>{width}}" for n in names)
        lines.append(f"{k:40}" + cells + mark)
    return "\n".join(lines)


def export(ref: str, into: Path) -> Path:
    """The source tree of git commit ``ref``, unpacked under ``into``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = dict.fromkeys(k for r in runs for k in r)
    return {k: round(statistics.median(r[k] for r in runs if k in r), 3) for k in keys}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="glidein-scale-")))
        variants: list[tuple[str, Path | None]] = [("", None)]
        if args.against:
            variants.append((f"@{args.against}", export(args.against, tmp / "ref")))
        pg, postmaster = None, None
        if "postgres" in args.backends and not args.postgres:
            sys.path.insert(0, str(ROOT))
            from tests.infra.postgres import running_postgres

            pg = stack.enter_context(running_postgres())
            postmaster = psutil.Process(int((pg.root / "data" / "postmaster.pid").read_text().split()[0]))
        n = 0
        for round_ in range(args.rounds):
            for suffix, tree in variants if round_ % 2 == 0 else variants[::-1]:
                for backend in args.backends:
                    n += 1
                    run_dir = tmp / f"run{n}"
                    how = Run(args.phases, tree, postmaster if backend == "postgres" else None, args.users)
                    if backend == "sqlite":
                        r = await run_backend("sqlite", "glidein.db", args.jobs, run_dir, False, how)
                    elif args.postgres:
                        r = await run_backend("postgres", args.postgres, args.jobs, run_dir, True, how)
                    else:
                        assert pg is not None
                        pg.run("createdb", f"scale{n}")
                        r = await run_backend("postgres", pg.url(f"scale{n}"), args.jobs, run_dir, True, how)
                        pg.run("dropdb", f"scale{n}")
                    runs.setdefault(backend + suffix, []).append(r)
    return {
        "jobs": args.jobs,
        "phases": args.phases,
        "against": args.against,
        "users": args.users,
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_end": os.getloadavg(),
            "python": platform.python_version(),
        },
        "results": {name: medians(rs) for name, rs in runs.items()},
        "runs": runs,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1_000_000, help="idle jobs to queue (CI smoke test: 20000)")
    p.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    p.add_argument("--postgres", help="postgresql:// URL of an empty database (default: start a throw-away one)")
    p.add_argument("--phases", choices=("all", "submit"), default="all", help="submit: the bulk submit alone")
    p.add_argument("--against", metavar="REF", help="also run the server as it was at this git commit")
    p.add_argument("--rounds", type=int, default=1, help="runs of each (alternating with --against); medians")
    p.add_argument("--users", type=int, default=1, help="users submitting the jobs in turn (fair share between them)")
    args = p.parse_args()
    if args.postgres and (args.rounds > 1 or args.against):
        p.error("--postgres URL takes one run: each run needs an empty database")
    args.backends = args.backends.split(",")
    out = asyncio.run(main_async(args))
    print(table(out["results"]))
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in out['machine']['load_avg_at_end'])}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'scale.json'}")


if __name__ == "__main__":
    main()
