"""The cost of the server's metrics in ``benchmarks.throughput``: a Prometheus stand-in that scrapes
it, the server's CPU per scrape, and the figures of paired runs with and without metrics."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path
from typing import cast

from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobSpec, PilotShape, Role, Scope
from glidein_server.server import Server, mint_token
from glidein_server.settings import ServerSettings, StateDir

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
    and for the server's CPU per job and per sync, each pair's relative cost, their median and
    interquartile range. The rate is the ``make bench`` figure the target is set on; other
    programs on the machine move it by ±20 % from run to run, hence the pairs and the CPU figures
    beside it."""
    rate_costs = [1 - a["rate_per_s"] / b["rate_per_s"] for a, b in zip(on, off, strict=True)]
    cpu_costs = [a["server_cpu_ms_per_job"] / b["server_cpu_ms_per_job"] - 1 for a, b in zip(on, off, strict=True)]
    sync_costs = [a["server_cpu_ms_per_sync"] / b["server_cpu_ms_per_sync"] - 1 for a, b in zip(on, off, strict=True)]
    sync_q1, sync_median, sync_q3 = _quartiles(sync_costs)
    rate_q1, rate_median, rate_q3 = _quartiles(rate_costs)
    cpu_q1, cpu_median, cpu_q3 = _quartiles(cpu_costs)
    rate_on = statistics.median(r["rate_per_s"] for r in on)
    # Pairs alternate which runs first (with metrics first in pairs 0, 2, ...): what the second run
    # of a pair loses against the first, whichever has metrics, shows an effect of order alone.
    order_costs = [
        1 - (b if i % 2 == 0 else a)["rate_per_s"] / (a if i % 2 == 0 else b)["rate_per_s"]
        for i, (a, b) in enumerate(zip(on, off, strict=True))
    ]
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
        "syncs_per_job_with_metrics_runs": [round(r["syncs_per_job"], 3) for r in on],
        "syncs_per_job_without_metrics_runs": [round(r["syncs_per_job"], 3) for r in off],
        "server_cpu_ms_per_sync_with_metrics": round(statistics.median(r["server_cpu_ms_per_sync"] for r in on), 4),
        "server_cpu_ms_per_sync_without_metrics": round(statistics.median(r["server_cpu_ms_per_sync"] for r in off), 4),
        "metrics_server_cpu_per_sync_pair_costs": [round(c, 4) for c in sync_costs],
        "metrics_server_cpu_per_sync_cost": round(sync_median, 4),
        "metrics_server_cpu_per_sync_cost_iqr": [round(sync_q1, 4), round(sync_q3, 4)],
        "second_run_rate_cost": round(statistics.median(order_costs), 4),
        "second_run_rate_costs": [round(c, 4) for c in order_costs],
        "server_cpu_ms_per_scrape": round(per_scrape_ms, 3),
        # What the scrapes alone add per job at this interval and the measured rate.
        "scrape_cpu_ms_per_job": round(per_scrape_ms / (scrape_every_s * rate_on), 4),
        "target_metrics_cost": 0.05,
        "metrics_primary_figure": "rate (the make bench figure)",
        "metrics_target_met": rate_median <= 0.05,
        "metrics_target_met_at_upper_quartile": rate_q3 <= 0.05,
    }


def rate_cost_estimate(
    off: list[dict[str, float]], scripted: dict[str, object], per_scrape_ms: float, scrape_every_s: float
) -> dict[str, object]:
    """What metrics cost the rate by their CPU share: the server CPU they add per job (the upper
    quartile of the scripted runs' relative cost applied to the server's CPU per job in the runs
    without metrics, plus the scrapes' share at that rate) over the CPU that everything in a run
    spends per job (server, pilot, jobs), on a machine whose cores the run keeps busy."""
    server_ms = statistics.median(r["server_cpu_ms_per_job"] for r in off)
    all_ms = statistics.median(r["all_cpu_ms_per_job"] for r in off)
    rate = statistics.median(r["rate_per_s"] for r in off)
    upper = cast("list[float]", scripted["scripted_metrics_cost_iqr"])[1]  # the less favourable quartile
    added_ms = max(0.0, upper) * server_ms + per_scrape_ms / (scrape_every_s * rate)
    return {
        "all_cpu_ms_per_job_without_metrics": round(all_ms, 3),
        "estimated_metrics_cpu_ms_per_job": round(added_ms, 4),
        "estimated_metrics_rate_cost": round(added_ms / all_ms, 4),
    }


def _pct(value: object) -> str:
    return f"{100 * float(str(value)):+.1f} %"


def metrics_rows(result: dict[str, object], scrape_every_s: float) -> list[tuple[str, str]]:
    cpu_iqr = cast("list[float]", result["metrics_server_cpu_cost_iqr"])
    rate_iqr = cast("list[float]", result["metrics_cost_iqr"])
    sync_iqr = cast("list[float]", result["metrics_server_cpu_per_sync_cost_iqr"])
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
        ("rate lost by the second run of a pair, whichever (median)", _pct(result["second_run_rate_cost"])),
        (
            "rate cost of metrics: median (IQR) [primary]",
            f"{_pct(result['metrics_cost'])} ({_pct(rate_iqr[0])} to {_pct(rate_iqr[1])})",
        ),
        (
            "server CPU per job with / without metrics (median)",
            f"{result['server_cpu_ms_per_job_with_metrics']:.3f} / "
            f"{result['server_cpu_ms_per_job_without_metrics']:.3f} ms",
        ),
        ("server CPU cost per pair", " ".join(_pct(c).replace(" ", "") for c in cpu_costs)),
        (
            "server CPU cost of metrics: median (IQR)",
            f"{_pct(result['metrics_server_cpu_cost'])} ({_pct(cpu_iqr[0])} to {_pct(cpu_iqr[1])})",
        ),
        (
            "server CPU per pilot sync with / without (median)",
            f"{result['server_cpu_ms_per_sync_with_metrics']:.3f} / "
            f"{result['server_cpu_ms_per_sync_without_metrics']:.3f} ms",
        ),
        (
            "server CPU cost per sync: median (IQR)",
            f"{_pct(result['metrics_server_cpu_per_sync_cost'])} ({_pct(sync_iqr[0])} to {_pct(sync_iqr[1])})",
        ),
        (
            "server CPU per scrape (its share per job here)",
            f"{result['server_cpu_ms_per_scrape']:.2f} ms ({result['scrape_cpu_ms_per_job']:.4f} ms)",
        ),
        ("metrics <= 5 % of the rate", f"{met} by the median; {sure}"),
    ]
