"""End-to-end throughput: N `/bin/true` jobs (submit -> done) through one pilot vs bare asyncio spawning.

Run with `make bench` (or `python -m benchmarks.throughput --jobs 2000`). Prints a table and writes
benchmarks/results/throughput.json. All measurements run in the same invocation, on the same machine.
The pilot runs with its default isolation (as a real pilot: the strongest available, bubblewrap where
it works) and, in the same rounds, without isolation: that one is the pilot's own overhead (the 0.7
target), and the difference is what the isolation costs per job.

Each round is also a pair of runs with and without the server's metrics (a scraper in its own
process, every ``--scrape-every`` seconds), back to back in alternating order: the cost of metrics
is the median of the pairs' costs, with their interquartile range, on the rate (the primary
figure) and on the server's CPU per job and per sync, beside the server's CPU per scrape; scripted
runs (``benchmarks.metrics_scripted``) attribute the server CPU that metrics cost, and give the
rate cost by CPU share. ``--metrics-only`` runs just the pairs (9 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.metrics_cost import (
    metrics_cost,
    metrics_rows,
    rate_cost_estimate,
    scrape_in_background,
    server_cpu_per_scrape,
)
from benchmarks.metrics_scripted import scripted_cost, scripted_rows
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobSpec, JobState, PilotShape, Role, Scope
from glidein_server.server import Server, mint_token
from glidein_server.settings import ServerSettings, StateDir

RESULTS = Path(__file__).resolve().parent / "results"
# Extra interpreter arguments for the pilot, e.g. "-m cProfile -o /tmp/pilot.prof" to profile it.
PILOT_PREFIX = os.environ.get("GLIDEIN_BENCH_PILOT_PREFIX", "").split()
#: --isolation asked for -> the isolation the pilot said it uses (``auto`` becomes ``bwrap`` or ``none``).
ISOLATION_SEEN: dict[str, str] = {}


async def bare_spawn(n: int, concurrency: int) -> float:
    """Rate of spawning `/bin/true` with asyncio, `concurrency` at a time (the baseline)."""
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with sem:
            proc = await asyncio.create_subprocess_exec(
                "/bin/true", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            await proc.wait()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return n / (time.perf_counter() - t0)


def count_calls(obj: object, name: str) -> list[int]:
    """Counts the calls of an async method of ``obj`` from now on (in ``[0]``)."""
    calls = [0]
    method = getattr(obj, name)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await method(*args, **kwargs)

    setattr(obj, name, counted)
    return calls


async def through_pilot(
    n: int, cpus: int, tmp: Path, isolation: str = "auto", *, metrics: bool = True, scrape_every_s: float = 15.0
) -> dict[str, float]:
    """With ``metrics``, the server keeps its metrics and is scraped every ``scrape_every_s`` (Prometheus's
    default is every 15 s); without, it keeps none."""
    state = StateDir(tmp / "server")
    state.write(ServerSettings(port=0, heartbeat_s=2.0, insecure_http=True, metrics=metrics))  # loopback only
    async with Server(str(state.root)) as srv, contextlib.AsyncExitStack() as stack:
        if metrics:
            scraper = await mint_token(srv.store, Role.OPERATOR, "prometheus", scopes=[Scope.METRICS])
            await scrape_in_background(srv.url, scraper, scrape_every_s, stack)
        user = await mint_token(srv.store, Role.USER, "bench")
        site = await mint_token(srv.store, Role.SITE, "bench")
        syncs = count_calls(srv.store, "sync")  # the pilot's syncs: reports, claims, heartbeats
        async with ApiClient(srv.url, site) as api:
            await api.demand("bench", PilotShape(cpus=cpus, memory_mb=cpus * 1024, disk_mb=10_000, walltime_s=3600))
            grant = await api.new_pilot("bench")
        token = tmp / "pilot.token"
        token.write_text(grant.token)
        token.chmod(0o600)
        log = open(tmp / "pilot.log", "wb")  # noqa: ASYNC230 - handed to the child
        pilot = await asyncio.create_subprocess_exec(
            sys.executable,
            *PILOT_PREFIX,
            "-m",
            "glidein_client.pilot",
            "run",
            "--server-url",
            srv.url,
            "--token-file",
            str(token),
            "--cpus",
            str(cpus),
            "--memory-mb",
            str(cpus * 1024),
            "--disk-mb",
            "10000",
            "--walltime-s",
            "3600",
            "--idle-timeout-s",
            "30",
            "--scratch",
            str(tmp / "scratch"),
            "--isolation",
            isolation,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            async with ApiClient(srv.url, user) as api:
                await asyncio.sleep(1.0)  # let the pilot start and long-poll, as a warm pilot would
                t0, cpu0, syncs0 = time.time(), time.process_time(), syncs[0]
                ids = await api.submit(
                    [JobSpec(argv=["/bin/true"], memory_mb=100, disk_mb=1, walltime_s=60) for _ in range(n)]
                )
                t_submitted = time.time() - t0
                # Watch from afar (a poll a second: about 1 ms of this process's CPU each, so as not
                # to load the server), then take the times from the server's own record of when each
                # job finished. The server's CPU counts from the submit until the poll that saw the
                # last job end (this process: the server, its SQLite thread and the watching client).
                while True:
                    counts = (await api.summary()).jobs
                    if counts.get("done", 0) + counts.get("failed", 0) >= n:
                        break
                    await asyncio.sleep(1.0)
                server_cpu_s, n_syncs = time.process_time() - cpu0, syncs[0] - syncs0
                jobs = [
                    j for offset in range(0, n, 1000) for j in (await api.list_jobs(limit=1000, offset=offset)).jobs
                ]  # only these on this server
                assert len(jobs) == len(ids) == n
                finished = [j.finished_at for j in jobs if j.finished_at is not None]
                elapsed = max(finished) - t0
                first_done = min(finished) - t0
                failed = sum(j.state is not JobState.DONE for j in jobs)
                cpu = psutil.Process(pilot.pid).cpu_times()
                pilot_cpu_s = cpu.user + cpu.system
                jobs_cpu_s = cpu.children_user + cpu.children_system  # its jobs (and bwrap), reaped
        finally:
            os.killpg(pilot.pid, signal.SIGTERM)
            await pilot.wait()
    chosen = re.search(r"isolates its jobs with (\w+)", (tmp / "pilot.log").read_text(errors="replace"))
    ISOLATION_SEEN[isolation] = chosen.group(1) if chosen else isolation
    return {
        "rate_per_s": n / elapsed,
        "elapsed_s": elapsed,
        "submit_s": t_submitted,
        "first_done_s": first_done,
        "failed": failed,
        "pilot_cpu_ms_per_job": 1000 * pilot_cpu_s / n,
        # Everything the run cost the machine's CPUs per job: server (and this watcher), pilot, jobs.
        "all_cpu_ms_per_job": 1000 * (server_cpu_s + pilot_cpu_s + jobs_cpu_s) / n,
        "server_cpu_ms_per_job": 1000 * server_cpu_s / n,
        "syncs_per_job": n_syncs / n,
        "server_cpu_ms_per_sync": 1000 * server_cpu_s / max(1, n_syncs),
    }


def _run_one(n: int, cpus: int, isolation: str, metrics: bool, scrape_every_s: float) -> tuple[dict[str, float], str]:
    """One end-to-end run, in a process of its own (see ``_measure``)."""
    with tempfile.TemporaryDirectory(prefix="glidein-bench-") as tmp:
        result = asyncio.run(
            through_pilot(n, cpus, Path(tmp), isolation, metrics=metrics, scrape_every_s=scrape_every_s)
        )
    return result, ISOLATION_SEEN[isolation]


async def _measure(args: argparse.Namespace, metrics: bool, isolation: str | None = None) -> dict[str, float]:
    """One end-to-end run in a fresh server, in a fresh process: a server run in this process after
    others inherits their heap and its garbage collections, which made the second run of each pair
    several per cent slower whichever had metrics."""
    isolation = isolation or args.isolation
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as pool:
        result, used = await asyncio.get_running_loop().run_in_executor(
            pool, _run_one, args.jobs, args.cpus, isolation, metrics, args.scrape_every
        )
    ISOLATION_SEEN[isolation] = used
    return result


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    # Each round runs the server with and without metrics back to back, in alternating order, so
    # that a noisy moment on the machine or a drift over the run hits both alike; the cost of
    # metrics is the median over rounds of each round's ratio. The bare baseline runs between them.
    bare_runs: list[float] = []
    pilot_runs: list[dict[str, float]] = []  # with metrics, as deployed
    plain_runs: list[dict[str, float]] = []  # the server without metrics
    unisolated_runs: list[dict[str, float]] = []  # with metrics, the pilot without isolation
    compare = not args.metrics_only and args.isolation != "none"
    load_at_start = os.getloadavg()[0]
    for i in range(args.rounds):
        if not args.metrics_only:
            bare_runs.append(await bare_spawn(args.jobs, args.cpus))
        for metrics in (True, False) if i % 2 == 0 else (False, True):
            (pilot_runs if metrics else plain_runs).append(await _measure(args, metrics))
        if compare:
            unisolated_runs.append(await _measure(args, True, "none"))
    if not args.metrics_only:
        bare_runs.append(await bare_spawn(args.jobs, args.cpus))
    with tempfile.TemporaryDirectory(prefix="glidein-bench-") as tmp:
        per_scrape_ms = await server_cpu_per_scrape(args.jobs, Path(tmp))
    scripted = await scripted_cost(args.scripted_pairs, 4000) if args.scripted_pairs else {}
    baseline = statistics.median(bare_runs) if bare_runs else None
    pilot = sorted(pilot_runs, key=lambda r: r["rate_per_s"])[len(pilot_runs) // 2]
    unisolated = sorted(unisolated_runs, key=lambda r: r["rate_per_s"])[len(unisolated_runs) // 2] if compare else pilot
    # Each slot runs its jobs one after another: what a job costs more, per slot, with the isolation.
    isolation_ms = 1000 * args.cpus * (1 / pilot["rate_per_s"] - 1 / unisolated["rate_per_s"])
    return {
        "benchmark": "true-jobs-end-to-end",
        "jobs": args.jobs,
        "pilot_cpus": args.cpus,
        "isolation": args.isolation,
        "isolation_used": ISOLATION_SEEN.get(args.isolation, args.isolation),
        "rounds": args.rounds,
        "scrape_every_s": args.scrape_every,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_1m_at_start": round(load_at_start, 2),
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
        "bare_asyncio_spawn_per_s": round(baseline, 1) if baseline else None,
        "bare_runs_per_s": [round(r, 1) for r in bare_runs],
        "glidein_per_s": round(pilot["rate_per_s"], 1),
        "glidein_runs_per_s": [round(r["rate_per_s"], 1) for r in pilot_runs],
        "ratio": round(pilot["rate_per_s"] / baseline, 3) if baseline else None,
        "glidein_no_isolation_per_s": round(unisolated["rate_per_s"], 1),
        "glidein_no_isolation_runs_per_s": [round(r["rate_per_s"], 1) for r in unisolated_runs],
        "ratio_no_isolation": round(unisolated["rate_per_s"] / baseline, 3) if baseline else None,
        "target_ratio": 0.7,  # the pilot's own overhead: without isolation
        "isolation_ms_per_job": round(isolation_ms, 2),
        "pilot_cpu_ms_per_job_no_isolation": round(unisolated["pilot_cpu_ms_per_job"], 3),
        "submit_s": round(pilot["submit_s"], 3),
        "first_done_s": round(pilot["first_done_s"], 3),
        "elapsed_s": round(pilot["elapsed_s"], 3),
        "pilot_cpu_ms_per_job": round(pilot["pilot_cpu_ms_per_job"], 3),
        "failed": sum(int(r["failed"]) for r in [*pilot_runs, *plain_runs, *unisolated_runs]),
        **metrics_cost(pilot_runs, plain_runs, per_scrape_ms, args.scrape_every),
        **scripted,
        **(rate_cost_estimate(plain_runs, scripted, per_scrape_ms, args.scrape_every) if scripted else {}),
    }


def _rows(result: dict[str, object], args: argparse.Namespace) -> list[tuple[str, str]]:
    rows = []
    if not args.metrics_only:
        used = result["isolation_used"]
        rows += [
            ("bare asyncio spawn (baseline, median)", f"{result['bare_asyncio_spawn_per_s']:.0f} jobs/s"),
            (
                f"glidein, 1 pilot x {args.cpus} slots, isolation none (median)",
                f"{result['glidein_no_isolation_per_s']:.0f} jobs/s, ratio {result['ratio_no_isolation']:.2f}"
                " (target >= 0.7)",
            ),
            (
                f"glidein, 1 pilot x {args.cpus} slots, isolation {args.isolation}: {used} (median)",
                f"{result['glidein_per_s']:.0f} jobs/s, ratio {result['ratio']:.2f}",
            ),
            (f"{used} isolation: extra time per job and slot", f"{result['isolation_ms_per_job']:.1f} ms"),
            (
                f"pilot CPU per job, none / {used}",
                f"{result['pilot_cpu_ms_per_job_no_isolation']:.2f} / {result['pilot_cpu_ms_per_job']:.2f} ms",
            ),
        ]
    rows += metrics_rows(result, args.scrape_every)
    if args.scripted_pairs:
        rows += scripted_rows(result)
        rows.append(
            (
                "estimated rate cost of metrics: their CPU / all CPU per job",
                f"{result['estimated_metrics_cpu_ms_per_job']:.4f} / {result['all_cpu_ms_per_job_without_metrics']:.2f}"
                f" ms = {100 * float(str(result['estimated_metrics_rate_cost'])):.2f} %",
            )
        )
    rows += [
        (f"submit of {args.jobs} jobs", f"{result['submit_s']:.2f} s"),
        ("first job done after submit", f"{result['first_done_s']:.3f} s"),
        ("pilot CPU per job", f"{result['pilot_cpu_ms_per_job']:.2f} ms"),
        ("failed jobs (all rounds)", str(result["failed"])),
    ]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument(
        "--rounds",
        type=int,
        help="rounds of all measurements, each a pair with and without metrics in alternating order; medians "
        "count (default: 3, or 9 with --metrics-only)",
    )
    p.add_argument(
        "--metrics-only",
        action="store_true",
        help="measure only the server with and without metrics (no bare baseline); writes throughput-metrics.json",
    )
    p.add_argument(
        "--scrape-every",
        type=float,
        default=15.0,
        help="seconds between scrapes of /metrics (default: Prometheus's default, 15; packaging/grafana/prometheus.yml "
        "asks for 30)",
    )
    p.add_argument(
        "--scripted-pairs",
        type=int,
        default=10,
        help="pairs of scripted runs (a fixed request sequence, 4,000 jobs) with and without metrics, to "
        "attribute the server CPU that metrics cost (0: none; see benchmarks.metrics_scripted)",
    )
    p.add_argument("--out", type=Path, help="the JSON file (default: benchmarks/results/throughput[-metrics].json)")
    p.add_argument(
        "--isolation",
        choices=("auto", "none", "bwrap"),
        default="auto",
        help="the pilot's job isolation (default: the strongest available, as a real pilot); unless none, "
        "the pilot without isolation is measured too",
    )
    args = p.parse_args()
    args.rounds = args.rounds or (9 if args.metrics_only else 3)
    args.out = args.out or RESULTS / ("throughput-metrics.json" if args.metrics_only else "throughput.json")
    result = asyncio.run(main_async(args))
    rows = _rows(result, args)
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
