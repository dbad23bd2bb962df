"""What users and dashboards read from a long queue: `python -m benchmarks.listing`.

For each backend (SQLite, and a throw-away PostgreSQL cluster started here), a real ``glidein-server
serve`` gets ``--jobs`` idle jobs (mixed 1- and 4-core, 50 datasets) and ``--pilots`` 8-core pilots
that claim (so some jobs run), as ``benchmarks.scale`` submits them. Then, in rounds, it times the
calls a user or a dashboard makes, through HTTP and in the store (a separate process opening the same
database): a first page of ``glidein status``, ``/summary``, a label filter, a page 2,000 jobs from the
end by offset and by keyset (``after``), and the monitoring snapshot (``GET /metrics``, the web
dashboard's sample). Besides p50 and p99 it gives the server's CPU per request (on PostgreSQL the
database's own CPU too), which the load of a shared machine barely moves. With ``--against REF`` the
server as it was at git commit REF runs too, on its own database filled alike, and each round
alternates which goes first. Prints a table and writes benchmarks/results/listing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from benchmarks.fleet import SHAPE, Fleet
from benchmarks.scale import ROOT, cpu_s, database_cpu_s, export, job_specs, serving
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import MAX_JOBS_PER_REQUEST, Role
from glidein_server.server import mint_token, open_store
from glidein_server.settings import ServerSettings, StateDir

RESULTS = ROOT / "benchmarks" / "results"
#: Timed in a separate process, this checkout's or the other commit's, on the server's database.
STORE_PROBE = """
import asyncio, json, resource, sys, time
from glidein_server.store.base import JobFilter
from glidein_server.server import open_store
from glidein_server.settings import StateDir

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

async def main(root, samples, depth_id, offset):
    state = StateDir(root)
    store = open_store(state, state.load())
    await store.open()
    calls = {
        "page": lambda: store.list_jobs(JobFilter(owner="bench", limit=100)),
        "summary": lambda: store.summary("bench"),
        "label": lambda: store.list_jobs(JobFilter(owner="bench", label=("dataset", "ds7"), limit=100)),
        "deep_offset": lambda: store.list_jobs(JobFilter(owner="bench", limit=1000, offset=offset)),
        "monitoring": lambda: store.monitoring(time.time(), "dataset", time.time() - 1800),
    }
    if "after" in JobFilter.__dataclass_fields__:
        keyset = JobFilter(owner="bench", limit=1000, after=depth_id, counts=False)
        calls["deep_keyset"] = lambda: store.list_jobs(keyset)
    out = {}
    for name, call in calls.items():
        await call()
        times, c0 = [], cpu()
        for _ in range(samples):
            t0 = time.perf_counter()
            await call()
            times.append(time.perf_counter() - t0)
        out[name] = {"times": times, "cpu": (cpu() - c0) / samples}
    await store.close()
    print(json.dumps(out))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
"""
CALLS = ("page", "summary", "label", "deep_offset", "deep_keyset", "monitoring")


def ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


class Variant:
    """One server (this checkout's, or the code of a commit) on its own database, filled alike."""

    def __init__(self, name: str, tree: Path | None, state: StateDir, postmaster: psutil.Process | None) -> None:
        self.name, self.tree, self.state, self.postmaster = name, tree, state, postmaster
        self.url, self.user, self.operator = "", "", ""
        self.server: psutil.Process | None = None
        self.depth_id = 0
        self.results: dict[str, dict[str, list[float]]] = {c: {} for c in CALLS}

    async def fill(self, jobs: int, pilots: int, stack: contextlib.AsyncExitStack, log: Path) -> None:
        store = open_store(self.state, self.state.load())
        await store.open()
        self.user = await mint_token(store, Role.USER, "bench")
        self.operator = await mint_token(store, Role.OPERATOR, "ops")
        site = await mint_token(store, Role.SITE, "bench")
        await store.close()
        self.url, self.server = await stack.enter_async_context(serving(self.state, log, self.tree))
        async with ApiClient(self.url, self.user) as api:
            specs = job_specs(jobs)
            ids: list[int] = []
            for i in range(0, jobs, MAX_JOBS_PER_REQUEST):
                ids += await api.submit(specs[i : i + MAX_JOBS_PER_REQUEST])
            self.depth_id = ids[-2001]
        async with ApiClient(self.url, site) as sapi:
            await sapi.demand("bench", SHAPE)
            fleet = await Fleet.start(sapi, [self.url], pilots)
            try:
                await fleet.claim()
            finally:
                await fleet.close()

    async def http_round(self, samples: int, offset: int) -> None:
        assert self.server is not None
        async with ApiClient(self.url, self.user) as api, aiohttp.ClientSession() as http:
            metrics_headers = {"Authorization": f"Bearer {self.operator}"}

            async def metrics() -> None:
                async with http.get(f"{self.url}/metrics", headers=metrics_headers) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status

            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "page": lambda: api.list_jobs(limit=100),
                "summary": api.summary,
                "label": lambda: api.list_jobs(label="dataset=ds7", limit=100),
                "deep_offset": lambda: api.list_jobs(limit=1000, offset=offset),
                "monitoring": metrics,
            }
            if self.tree is None:  # a server from before keyset paging would answer the first page
                calls["deep_keyset"] = lambda: api.list_jobs(limit=1000, after=self.depth_id, counts=False)
            for name, call in calls.items():
                await call()
                times = []
                c0, d0 = cpu_s(self.server), database_cpu_s(self.postmaster)
                for _ in range(samples):
                    t0 = time.perf_counter()
                    await call()
                    times.append(time.perf_counter() - t0)
                r = self.results[name]
                r.setdefault("http_s", []).extend(times)
                r.setdefault("server_cpu_ms", []).append(1000 * (cpu_s(self.server) - c0) / samples)
                if self.postmaster is not None:
                    r.setdefault("database_cpu_ms", []).append(1000 * (database_cpu_s(self.postmaster) - d0) / samples)

    async def store_round(self, samples: int, offset: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(self.tree or ROOT)}
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", STORE_PROBE, str(self.state.root), str(samples), str(self.depth_id), str(offset)),
            stdout=subprocess.PIPE,
            env=env,
            cwd=self.tree or ROOT,
        )
        out, _ = await proc.communicate()
        for name, got in json.loads(out).items():
            self.results[name].setdefault("store_s", []).extend(got["times"])
            self.results[name].setdefault("store_cpu_ms", []).append(1000 * got["cpu"])

    def summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for name, r in self.results.items():
            if not r:
                continue
            row: dict[str, float] = {}
            for key, label in (("http_s", "http"), ("store_s", "store")):
                if r.get(key):
                    row[f"{label}_p50_ms"], row[f"{label}_p99_ms"] = ms(r[key], 0.5), ms(r[key], 0.99)
            for key in ("server_cpu_ms", "database_cpu_ms", "store_cpu_ms"):
                if r.get(key):
                    row[key] = round(statistics.median(r[key]), 2)
            out[name] = row
        return out


async def run_backend(
    backend: str, args: argparse.Namespace, tmp: Path, stack: contextlib.AsyncExitStack
) -> dict[str, Any]:
    postmaster = None
    databases = {"this": "glidein.db", "ref": "glidein.db"}
    if backend == "postgres":
        sys.path.insert(0, str(ROOT))
        from tests.infra.postgres import running_postgres

        pg = stack.enter_context(running_postgres())
        postmaster = psutil.Process(int((pg.root / "data" / "postmaster.pid").read_text().split()[0]))
        for name in databases:
            pg.run("createdb", name)
            databases[name] = pg.url(name)
    trees: list[tuple[str, Path | None]] = [("this", None)]
    if args.against:
        trees.append(("ref", export(args.against, tmp / "ref-tree")))
    variants = []
    for name, tree in trees:
        state = StateDir(tmp / f"{backend}-{name}")
        state.write(
            ServerSettings(
                database=databases[name],
                insecure_http=True,
                lease_s=3600,
                heartbeat_s=600,
                pilot_timeout_s=3600,
                **{f"rate_{r}_per_s": 0.0 for r in ("operator", "user", "site", "pilot", "anonymous")},  # type: ignore[arg-type]
            )
        )
        variant = Variant(name, tree, state, postmaster)
        t0 = time.perf_counter()
        await variant.fill(args.jobs, args.pilots, stack, tmp / f"{backend}-{name}.log")
        print(f"{backend} {name}: filled in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        variants.append(variant)
    offset = args.jobs - 2000
    for round_ in range(args.rounds):
        for variant in variants if round_ % 2 == 0 else variants[::-1]:
            await variant.http_round(args.samples, offset)
            await variant.store_round(args.samples, offset)
    return {v.name: v.summary() for v in variants}


def table(results: dict[str, dict[str, Any]], against: str | None) -> str:
    head = "| backend | call | code | HTTP p50 / p99, ms | server CPU per request, ms | in the store p50 / p99, ms |"
    lines = [head, "| --- | --- | --- | --- | --- | --- |"]
    for backend, variants in results.items():
        for call in CALLS:
            for name, rows in variants.items():
                r = rows.get(call)
                if not r:
                    continue
                code = "this" if name == "this" else f"@{against}"
                cpu = f"{r.get('server_cpu_ms', 0):.2f}" + (
                    f" (+{r['database_cpu_ms']:.2f} database)" if "database_cpu_ms" in r else ""
                )
                http = f"{r.get('http_p50_ms', 0):.1f} / {r.get('http_p99_ms', 0):.1f}"
                store = f"{r.get('store_p50_ms', 0):.1f} / {r.get('store_p99_ms', 0):.1f}"
                lines.append(f"| {backend} | {call} | {code} | {http} | {cpu} | {store} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="glidein-listing-") as tmp:
        for backend in args.backends.split(","):
            async with contextlib.AsyncExitStack() as stack:
                results[backend] = await run_backend(backend, args, Path(tmp), stack)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=200_000)
    p.add_argument("--pilots", type=int, default=1000, help="8-core pilots that claim before the timing")
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--samples", type=int, default=20, help="requests per call and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--against", metavar="REF", help="also run the server as it was at this git commit")
    args = p.parse_args()
    load0 = os.getloadavg()
    results = asyncio.run(main_async(args))
    print(table(results, args.against))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "jobs": args.jobs,
        "pilots": args.pilots,
        "samples": args.samples,
        "rounds": args.rounds,
        "against": args.against,
        "load_avg": [load0, os.getloadavg()],
        "results": results,
    }
    (RESULTS / "listing.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
