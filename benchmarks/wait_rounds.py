"""What one round of ``glidein wait`` costs the server: `python -m benchmarks.wait_rounds`.

A real ``glidein-server serve`` (SQLite; PostgreSQL too with ``--backends sqlite,postgres``, a
throw-away cluster started here) holds, for each size in ``--jobs``, one user's idle jobs (mixed 1-
and 4-core, as ``benchmarks.scale`` submits them; no pilot runs them, so the wait never ends). The
real ``glidein wait --timeout`` command of this checkout, without ids (every active job of the
user), talks to the server through a counting proxy here, which notes each request's ids and the
jobs in its answer and reads the server process's time on a CPU (on PostgreSQL the database
cluster's processes' too) before and after it. The requests come in bursts a poll interval apart:
the first is the start and first round, each later one a round (but the last, which a wait cut
short by its timeout may run into the one before it). With ``--against REF`` the command as it was
at git commit REF runs too, against the same server, alternating which goes first. Prints a table
of the start's and the median round's requests, ids asked, jobs read and server CPU, and writes
benchmarks/results/wait_rounds.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web

from benchmarks.scale import ROOT, bench_state, cpu_s, export, job_specs, serving
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import MAX_JOBS_PER_REQUEST, Role
from glidein_server.server import mint_token, open_store

RESULTS = ROOT / "benchmarks" / "results"
#: Requests further apart than this belong to different rounds (the command polls every second).
GAP_S = 0.5


@dataclass
class Asked:
    start: float
    end: float
    ids: int
    jobs: int
    cpu0: float  # the server's CPU seconds (and the database's) when the request came
    cpu1: float  # and when its answer had come back


class Proxy:
    """Forwards each request to the server, noting what it asked, how many jobs came back and the CPU."""

    def __init__(self, upstream: str, server: psutil.Process, postmaster: psutil.Process | None) -> None:
        self.upstream, self.server, self.postmaster = upstream, server, postmaster
        self.asked: list[Asked] = []
        self.http: aiohttp.ClientSession | None = None

    def cpu(self) -> float:
        total = on_cpu_s(self.server.pid)
        if self.postmaster is not None:  # the database's processes that live through the run (its backends)
            with contextlib.suppress(psutil.Error):
                total += sum(on_cpu_s(p.pid) for p in [self.postmaster, *self.postmaster.children()])
        return total

    async def handle(self, request: web.Request) -> web.Response:
        assert self.http is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        t0, c0 = time.monotonic(), self.cpu()
        async with self.http.request(
            request.method, self.upstream + request.rel_url.path_qs, headers=headers, data=body
        ) as resp:
            answer = await resp.read()
        c1, t1 = self.cpu(), time.monotonic()
        jobs = len(json.loads(answer).get("jobs", [])) if resp.status == 200 and request.path.endswith("/jobs") else 0
        ids = request.query.get("ids", "")
        self.asked.append(Asked(t0, t1, len(ids.split(",")) if ids else 0, jobs, c0, c1))
        return web.Response(body=answer, status=resp.status, content_type=resp.content_type)


def on_cpu_s(pid: int) -> float:
    """The time a process's threads have spent on a CPU, to the nanosecond (``/proc/PID/task/*/schedstat``;
    the CPU times of ``/proc/PID/stat`` count in 10 ms ticks, coarser than a round); ``cpu_s`` elsewhere."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return cpu_s(psutil.Process(pid))
    for task in tasks:
        with contextlib.suppress(OSError, ValueError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


@contextlib.asynccontextmanager
async def proxying(proxy: Proxy) -> Any:
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        proxy.http = http
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()


def bursts(asked: list[Asked]) -> list[dict[str, float]]:
    """The requests grouped into rounds (a quiet gap between them), each summed."""
    groups: list[list[Asked]] = []
    for a in sorted(asked, key=lambda a: a.start):
        if groups and a.start - max(x.end for x in groups[-1]) < GAP_S:
            groups[-1].append(a)
        else:
            groups.append([a])
    return [
        {
            "requests": len(g),
            "ids": sum(a.ids for a in g),
            "jobs": sum(a.jobs for a in g),
            "server_cpu_ms": round(1000 * (max(a.cpu1 for a in g) - min(a.cpu0 for a in g)), 2),
            "wall_ms": round(1000 * (max(a.end for a in g) - g[0].start), 1),
        }
        for g in groups
    ]


async def wait_once(url: str, token_file: Path, tree: Path | None, wait_s: float, tmp: Path) -> None:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp / "xdg"), "PYTHONPATH": str(tree or ROOT)}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "glidein_client.user.cli", "--json", "--url", url, "--token-file", str(token_file)),
        *("wait", "--timeout", f"{wait_s}s"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tree or ROOT,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 3, (proc.returncode, out, err)  # timed out: the jobs never run


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]} if rounds else {}


async def run_backend(backend: str, args: argparse.Namespace, tmp: Path, stack: contextlib.AsyncExitStack) -> Any:
    postmaster, database = None, ""
    if backend == "postgres":
        from tests.infra.postgres import running_postgres

        pg = stack.enter_context(running_postgres())
        postmaster = psutil.Process(int((pg.root / "data" / "postmaster.pid").read_text().split()[0]))
        pg.run("createdb", "wait")
        database = pg.url("wait")
    state, _, _ = await bench_state(tmp / backend, **({"database": database} if database else {}))
    store = open_store(state, state.load())
    await store.open()
    tokens = {n: await mint_token(store, Role.USER, f"owner{n}") for n in args.jobs}
    await store.close()
    url, server = await stack.enter_async_context(serving(state, tmp / f"{backend}.log"))
    for n, token in tokens.items():
        async with ApiClient(url, token) as api:
            specs = job_specs(n)
            for i in range(0, n, MAX_JOBS_PER_REQUEST):
                await api.submit(specs[i : i + MAX_JOBS_PER_REQUEST])
    proxy = Proxy(url, server, postmaster)
    proxy_url = await stack.enter_async_context(proxying(proxy))
    trees: list[tuple[str, Path | None]] = [("this", None)]
    if args.against:
        trees.append(("ref", export(args.against, tmp / "ref-tree")))
    out: dict[str, dict[str, Any]] = {}
    for n, token in tokens.items():
        token_file = tmp / f"token-{n}"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        runs: dict[str, dict[str, list[dict[str, float]]]] = {name: {"start": [], "rounds": []} for name, _ in trees}
        for round_ in range(args.repeats):
            for name, tree in trees if round_ % 2 == 0 else trees[::-1]:
                proxy.asked = []
                await wait_once(proxy_url, token_file, tree, args.wait_s or max(8.0, n / 3000), tmp)
                got = bursts(proxy.asked)
                runs[name]["start"].append(got[0])
                runs[name]["rounds"].extend(got[1:-1])  # the last may run into the one before it
                print(f"{backend} {n} {name}: {len(got) - 2} rounds", file=sys.stderr, flush=True)
        out[str(n)] = {
            name: {"start": medians(r["start"]), "round": medians(r["rounds"]), "rounds": len(r["rounds"])}
            for name, r in runs.items()
        }
    return out


def table(results: dict[str, Any], against: str | None) -> str:
    head = "| backend | jobs | code | start: requests / ids / jobs read / server CPU ms | "
    head += "per round: requests / ids asked / jobs read / server CPU ms / wall ms |"
    lines = [head, "| --- | --- | --- | --- | --- |"]
    for backend, sizes in results.items():
        for n, codes in sizes.items():
            for name, r in codes.items():
                s, p = r["start"], r["round"]
                code = "this" if name == "this" else f"@{against}"
                start = f"{s['requests']:.0f} / {s['ids']:.0f} / {s['jobs']:.0f} / {s['server_cpu_ms']:.1f}"
                per = "-"
                if p:
                    per = f"{p['requests']:.0f} / {p['ids']:.0f} / {p['jobs']:.0f} / {p['server_cpu_ms']:.2f} / "
                    per += f"{p['wall_ms']:.1f}"
                lines.append(f"| {backend} | {int(n):,} | {code} | {start} | {per} ({r['rounds']} rounds) |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="glidein-wait-") as tmp:
        for backend in args.backends.split(","):
            async with contextlib.AsyncExitStack() as stack:
                results[backend] = await run_backend(backend, args, Path(tmp), stack)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", default="10000,100000", help="sizes of the user's queue, comma-separated")
    p.add_argument("--backends", default="sqlite")
    p.add_argument(
        "--wait-s", type=float, default=0.0, help="how long each glidein wait runs (default: 8 s, 1 s per 3,000 jobs)"
    )
    p.add_argument("--repeats", type=int, default=2, help="runs of each code per size, alternating")
    p.add_argument("--against", metavar="REF", help="also run glidein wait as it was at this git commit")
    args = p.parse_args()
    args.jobs = [int(x) for x in args.jobs.split(",")]
    load0 = os.getloadavg()
    results = asyncio.run(main_async(args))
    print(table(results, args.against))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "jobs": args.jobs,
        "wait_s": args.wait_s,
        "repeats": args.repeats,
        "against": args.against,
        "load_avg": [load0, os.getloadavg()],
        "results": results,
    }
    (RESULTS / "wait_rounds.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
