"""End-to-end throughput: N `/bin/true` jobs (submit -> done) through one pilot vs bare asyncio spawning.

Run with `make bench` (or `python -m benchmarks.throughput --jobs 2000`). Prints a table and writes
benchmarks/results/throughput.json. All measurements run in the same invocation, on the same machine.
The pilot runs with its default isolation (as a real pilot: the strongest available, bubblewrap where
it works) and, in the same rounds, without isolation: that one is the pilot's own overhead (the 0.7
target), and the difference is what the isolation costs per job.
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
#: /metrics every argv[2] seconds with the token read from stdin; it exits on any other answer than 200.
SCRAPER = """
import sys, time, urllib.request
token = sys.stdin.readline().strip()
request = urllib.request.Request(sys.argv[1] + "/metrics", headers={"Authorization": "Bearer " + token})
while True:
    with urllib.request.urlopen(request) as answer:
        answer.read()
    time.sleep(float(sys.argv[2]))
"""


async def start_scraper(url: str, token: str, interval_s: float, stack: contextlib.AsyncExitStack) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRAPER, url, str(interval_s), stdin=asyncio.subprocess.PIPE
    )
    assert proc.stdin is not None
    proc.stdin.write(token.encode() + b"\n")
    await proc.stdin.drain()
    proc.stdin.close()

    async def stop() -> None:
        assert proc.returncode is None, f"the scraper stopped (exit {proc.returncode})"
        proc.kill()
        await proc.wait()

    stack.push_async_callback(stop)


async def through_pilot(
    n: int, cpus: int, tmp: Path, isolation: str = "auto", *, metrics: bool = True, scrape_every_s: float = 1.0
) -> dict[str, float]:
    """With ``metrics``, the server keeps its metrics and is scraped every ``scrape_every_s`` (Prometheus's
    default is every 15 s); without, it keeps none."""
    state = StateDir(tmp / "server")
    state.write(ServerSettings(port=0, heartbeat_s=2.0, insecure_http=True, metrics=metrics))  # loopback only
    async with Server(str(state.root)) as srv, contextlib.AsyncExitStack() as stack:
        if metrics:
            scraper = await mint_token(srv.store, Role.OPERATOR, "prometheus", scopes=[Scope.METRICS])
            await start_scraper(srv.url, scraper, scrape_every_s, stack)
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
                t0 = time.time()
                ids = await api.submit(
                    [JobSpec(argv=["/bin/true"], memory_mb=100, disk_mb=1, walltime_s=60) for _ in range(n)]
                )
                t_submitted = time.time() - t0
                # Watch from afar (4 polls a second, so as not to load the server), then take the
                # times from the server's own record of when each job finished.
                while True:
                    counts = (await api.summary()).jobs
                    if counts.get("done", 0) + counts.get("failed", 0) >= n:
                        break
                    await asyncio.sleep(0.25)
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
    }


async def _measure(args: argparse.Namespace, metrics: bool, isolation: str | None = None) -> dict[str, float]:
    """One end-to-end run; also the CPU time this process (the server and the client watching
    it, 4 polls a second) spent per job."""
    with tempfile.TemporaryDirectory(prefix="glidein-bench-") as tmp:
        cpu0 = time.process_time()
        run = await through_pilot(
            args.jobs,
            args.cpus,
            Path(tmp),
            isolation or args.isolation,
            metrics=metrics,
            scrape_every_s=args.scrape_every,
        )
        run["server_cpu_ms_per_job"] = 1000 * (time.process_time() - cpu0) / args.jobs
    return run


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    # Each round runs the server with and without metrics back to back, in alternating order, so
    # that a noisy moment on the machine or a drift over the run hits both alike; the cost of
    # metrics is the median over rounds of each round's ratio. The bare baseline runs between them.
    bare_runs: list[float] = []
    pilot_runs: list[dict[str, float]] = []  # with metrics, as deployed
    plain_runs: list[dict[str, float]] = []  # the server without metrics
    unisolated_runs: list[dict[str, float]] = []  # with metrics, the pilot without isolation
    compare = not args.metrics_only and args.isolation != "none"
    for i in range(args.rounds):
        if not args.metrics_only:
            bare_runs.append(await bare_spawn(args.jobs, args.cpus))
        for metrics in (True, False) if i % 2 == 0 else (False, True):
            (pilot_runs if metrics else plain_runs).append(await _measure(args, metrics))
        if compare:
            unisolated_runs.append(await _measure(args, True, "none"))
    if not args.metrics_only:
        bare_runs.append(await bare_spawn(args.jobs, args.cpus))
    baseline = statistics.median(bare_runs) if bare_runs else None
    pilot = sorted(pilot_runs, key=lambda r: r["rate_per_s"])[len(pilot_runs) // 2]
    plain = statistics.median(r["rate_per_s"] for r in plain_runs)
    ratios = [on["rate_per_s"] / off["rate_per_s"] for on, off in zip(pilot_runs, plain_runs, strict=True)]
    cpu_on = statistics.median(r["server_cpu_ms_per_job"] for r in pilot_runs)
    cpu_off = statistics.median(r["server_cpu_ms_per_job"] for r in plain_runs)
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
        "without_metrics_per_s": round(plain, 1),
        "without_metrics_runs_per_s": [round(r["rate_per_s"], 1) for r in plain_runs],
        "metrics_round_ratios": [round(r, 3) for r in ratios],
        "metrics_cost": round(1 - statistics.median(ratios), 3),
        "target_metrics_cost": 0.05,
        "server_cpu_ms_per_job_with_metrics": round(cpu_on, 3),
        "server_cpu_ms_per_job_without_metrics": round(cpu_off, 3),
        "metrics_server_cpu_cost": round(cpu_on / cpu_off - 1, 3),
    }


def _rows(result: dict[str, object], args: argparse.Namespace) -> list[tuple[str, str]]:
    def pct(key: str) -> str:
        return f"{100 * float(str(result[key])):+.1f}%"

    ratios = cast("list[float]", result["metrics_round_ratios"])
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
    else:
        rows.append(
            (
                f"glidein with metrics, scraped every {args.scrape_every:g} s (median)",
                f"{result['glidein_per_s']:.0f} jobs/s",
            )
        )
    rows += [
        ("glidein without metrics (median)", f"{result['without_metrics_per_s']:.0f} jobs/s"),
        ("rate with / without metrics, per round", " ".join(f"{r:.3f}" for r in ratios)),
        ("cost of metrics: 1 - median ratio (target <= 5%)", pct("metrics_cost")),
        (
            "server CPU per job with / without metrics",
            f"{result['server_cpu_ms_per_job_with_metrics']:.2f} / "
            f"{result['server_cpu_ms_per_job_without_metrics']:.2f} ms",
        ),
        ("server CPU cost of metrics", pct("metrics_server_cpu_cost")),
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
        "--rounds", type=int, default=3, help="rounds of all measurements, in alternating order; medians count"
    )
    p.add_argument(
        "--metrics-only",
        action="store_true",
        help="measure only the server with and without metrics (no bare baseline); writes throughput-metrics.json",
    )
    p.add_argument(
        "--scrape-every", type=float, default=1.0, help="seconds between scrapes of /metrics (Prometheus's default: 15)"
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
