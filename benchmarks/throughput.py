"""End-to-end throughput: N `/bin/true` jobs (submit -> done) through one pilot vs bare asyncio spawning.

Run with `make bench` (or `python -m benchmarks.throughput --jobs 2000`). Prints a table and writes
benchmarks/results/throughput.json. All measurements run in the same invocation, on the same machine.
The pilot runs with its default isolation (as a real pilot: the strongest available, bubblewrap where
it works) and, in the same rounds, without isolation: that one is the pilot's own overhead (the 0.7
target), and the difference is what the isolation costs per job.

Each round is also a pair of runs with and without the server's metrics (a scraper in its own
process, every ``--scrape-every`` seconds), back to back in alternating order: the cost of metrics
is the median of the pairs' costs, with their interquartile range, on the rate and on the server's
CPU per job (the primary figure: load from other programs barely moves it), beside the server's
CPU per scrape. ``--metrics-only`` runs just the pairs (9 by default).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import psutil

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


#: A Prometheus stand-in, in its own process as Prometheus is (its CPU is not the server's): GET
#: /metrics every argv[2] seconds (argv[3] times, or forever) on one kept-alive connection, as
#: Prometheus scrapes, with the token read from stdin; it exits on any other answer than 200.
SCRAPER = """
import http.client, sys, time, urllib.parse
token = sys.stdin.readline().strip()
url = urllib.parse.urlsplit(sys.argv[1])
headers = {"Authorization": "Bearer " + token}
connection = http.client.HTTPConnection(url.hostname, url.port)
times = int(sys.argv[3]) if len(sys.argv) > 3 else -1
while times:
    connection.request("GET", "/metrics", headers=headers)
    answer = connection.getresponse()
    answer.read()
    if answer.status != 200:
        sys.exit(f"the scrape got {answer.status}")
    times -= 1
    time.sleep(float(sys.argv[2]))
"""


async def start_scraper(
    url: str, token: str, interval_s: float, times: int | None = None
) -> asyncio.subprocess.Process:
    extra = [] if times is None else [str(times)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRAPER, url, str(interval_s), *extra, stdin=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None
    proc.stdin.write(token.encode() + b"\n")
    await proc.stdin.drain()
    proc.stdin.close()
    return proc


async def scrape_in_background(url: str, token: str, interval_s: float, stack: contextlib.AsyncExitStack) -> None:
    proc = await start_scraper(url, token, interval_s)

    async def stop() -> None:
        assert proc.returncode is None, f"the scraper stopped (exit {proc.returncode})"
        proc.kill()
        await proc.wait()

    stack.push_async_callback(stop)


async def server_cpu_per_scrape(n_jobs: int, tmp: Path, scrapes: int = 300) -> float:
    """Server CPU (ms) of one scrape on one kept-alive connection, the server holding ``n_jobs`` idle
    jobs, one site and its demand, and nothing else to do."""
    state = StateDir(tmp / "scrape-server")
    state.write(ServerSettings(port=0, insecure_http=True))  # loopback only
    async with Server(str(state.root)) as srv:
        token = await mint_token(srv.store, Role.OPERATOR, "prometheus", scopes=[Scope.METRICS])
        site = await mint_token(srv.store, Role.SITE, "bench")
        async with ApiClient(srv.url, site) as api:
            await api.demand("bench", PilotShape(cpus=2, memory_mb=2048, disk_mb=10_000, walltime_s=3600))
        user = await mint_token(srv.store, Role.USER, "bench")
        async with ApiClient(srv.url, user) as api:
            await api.submit([JobSpec(argv=["/bin/true"], memory_mb=100, disk_mb=1, walltime_s=60)] * n_jobs)
        await asyncio.sleep(0.5)
        idle0 = time.process_time()
        await asyncio.sleep(1.0)  # what the idle server costs a second, taken off below
        idle_ms_per_s = 1000 * (time.process_time() - idle0)
        t0, cpu0 = time.perf_counter(), time.process_time()
        proc = await start_scraper(srv.url, token, 0.01, scrapes)  # 100/s, within the operator rate limit
        assert await proc.wait() == 0, "the scraper failed"
        wall, cpu_ms = time.perf_counter() - t0, 1000 * (time.process_time() - cpu0)
    return max(0.0, cpu_ms - idle_ms_per_s * wall) / scrapes


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
                t0, cpu0 = time.time(), time.process_time()
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
                server_cpu_s = time.process_time() - cpu0
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
        "server_cpu_ms_per_job": 1000 * server_cpu_s / n,
    }


async def _measure(args: argparse.Namespace, metrics: bool, isolation: str | None = None) -> dict[str, float]:
    """One end-to-end run in a fresh server."""
    with tempfile.TemporaryDirectory(prefix="glidein-bench-") as tmp:
        return await through_pilot(
            args.jobs,
            args.cpus,
            Path(tmp),
            isolation or args.isolation,
            metrics=metrics,
            scrape_every_s=args.scrape_every,
        )


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
    }


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    """Lower quartile, median and upper quartile (the median thrice for a single value)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def metrics_cost(
    on: list[dict[str, float]], off: list[dict[str, float]], per_scrape_ms: float, scrape_every_s: float
) -> dict[str, object]:
    """The cost of metrics from paired runs (with, without; each pair back to back): for the rate
    and for the server's CPU per job, each pair's relative cost, their median and interquartile
    range. The server's CPU per job is the primary figure: other programs on the machine move
    the rate by ±20 % from run to run and the CPU time by far less."""
    rate_costs = [1 - a["rate_per_s"] / b["rate_per_s"] for a, b in zip(on, off, strict=True)]
    cpu_costs = [a["server_cpu_ms_per_job"] / b["server_cpu_ms_per_job"] - 1 for a, b in zip(on, off, strict=True)]
    rate_q1, rate_median, rate_q3 = _quartiles(rate_costs)
    cpu_q1, cpu_median, cpu_q3 = _quartiles(cpu_costs)
    rate_on = statistics.median(r["rate_per_s"] for r in on)
    return {
        "metrics_pairs": len(on),
        "with_metrics_runs_per_s": [round(r["rate_per_s"], 1) for r in on],
        "without_metrics_per_s": round(statistics.median(r["rate_per_s"] for r in off), 1),
        "without_metrics_runs_per_s": [round(r["rate_per_s"], 1) for r in off],
        "metrics_round_ratios": [round(1 - c, 3) for c in rate_costs],
        "metrics_cost": round(rate_median, 4),
        "metrics_cost_iqr": [round(rate_q1, 4), round(rate_q3, 4)],
        "server_cpu_ms_per_job_with_metrics": round(statistics.median(r["server_cpu_ms_per_job"] for r in on), 4),
        "server_cpu_ms_per_job_without_metrics": round(statistics.median(r["server_cpu_ms_per_job"] for r in off), 4),
        "server_cpu_ms_per_job_with_metrics_runs": [round(r["server_cpu_ms_per_job"], 4) for r in on],
        "server_cpu_ms_per_job_without_metrics_runs": [round(r["server_cpu_ms_per_job"], 4) for r in off],
        "metrics_server_cpu_pair_costs": [round(c, 4) for c in cpu_costs],
        "metrics_server_cpu_cost": round(cpu_median, 4),
        "metrics_server_cpu_cost_iqr": [round(cpu_q1, 4), round(cpu_q3, 4)],
        "server_cpu_ms_per_scrape": round(per_scrape_ms, 3),
        # What the scrapes alone add per job at this interval and the measured rate.
        "scrape_cpu_ms_per_job": round(per_scrape_ms / (scrape_every_s * rate_on), 4),
        "target_metrics_cost": 0.05,
        "metrics_primary_figure": "server CPU per job",
        "metrics_target_met": cpu_median <= 0.05,
        "metrics_target_met_at_upper_quartile": cpu_q3 <= 0.05,
        "metrics_rate_target_met": rate_median <= 0.05,
    }


def _pct(value: object) -> str:
    return f"{100 * float(str(value)):+.1f} %"


def _metrics_rows(result: dict[str, object], scrape_every_s: float) -> list[tuple[str, str]]:
    cpu_iqr = cast("list[float]", result["metrics_server_cpu_cost_iqr"])
    rate_iqr = cast("list[float]", result["metrics_cost_iqr"])
    cpu_costs = cast("list[float]", result["metrics_server_cpu_pair_costs"])
    ratios = cast("list[float]", result["metrics_round_ratios"])
    met = "met" if result["metrics_target_met"] else "NOT met"
    sure = (
        "the upper quartile too"
        if result["metrics_target_met_at_upper_quartile"]
        else "the upper quartile is not: not confirmed"
    )
    return [
        (f"pairs with / without metrics, scraped every {scrape_every_s:g} s", str(result["metrics_pairs"])),
        (
            "rate with / without metrics (median)",
            f"{result['glidein_per_s']:.0f} / {result['without_metrics_per_s']:.0f} jobs/s",
        ),
        ("rate with / without, per pair", " ".join(f"{r:.3f}" for r in ratios)),
        (
            "rate cost of metrics: median (IQR)",
            f"{_pct(result['metrics_cost'])} ({_pct(rate_iqr[0])} to {_pct(rate_iqr[1])})",
        ),
        (
            "server CPU per job with / without metrics (median)",
            f"{result['server_cpu_ms_per_job_with_metrics']:.3f} / "
            f"{result['server_cpu_ms_per_job_without_metrics']:.3f} ms",
        ),
        ("server CPU cost per pair", " ".join(_pct(c).replace(" ", "") for c in cpu_costs)),
        (
            "server CPU cost of metrics: median (IQR) [primary]",
            f"{_pct(result['metrics_server_cpu_cost'])} ({_pct(cpu_iqr[0])} to {_pct(cpu_iqr[1])})",
        ),
        (
            "server CPU per scrape (its share per job here)",
            f"{result['server_cpu_ms_per_scrape']:.2f} ms ({result['scrape_cpu_ms_per_job']:.4f} ms)",
        ),
        ("metrics <= 5 % of server CPU per job", f"{met} by the median; {sure}"),
    ]


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
    rows += _metrics_rows(result, args.scrape_every)
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
