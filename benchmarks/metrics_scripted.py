"""The server's CPU cost of keeping metrics, under a fixed request sequence: the same jobs submitted,
claimed and finished by the same scripted pilots through a real ``glidein-server serve``, with
metrics on and off in alternating pairs. Unlike a run through a real pilot, whose syncs batch more
or fewer jobs as the machine is busier, every run makes the same requests, so the server's CPU
time differs only by what the metrics cost (and by what other programs do to the caches).

``python -m benchmarks.metrics_scripted [--pairs N] [--jobs N]``; ``benchmarks.throughput`` runs it
too, to bound what metrics can cost its rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.fleet import SHAPE, Fleet
from benchmarks.scale import bench_state, cpu_s, job_specs, serving
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import MAX_JOBS_PER_REQUEST

RESULTS = Path(__file__).resolve().parent / "results"
PILOTS = 16  # 8 cores each


async def scripted_run(tmp: Path, metrics: bool, jobs: int) -> dict[str, float]:
    """One run: ``jobs`` mixed 1- and 4-core jobs with labels submitted, then claimed and finished
    by 16 scripted 8-core pilots until none is left. The server's CPU counts from the submit to
    the last sync; its start-up does not count."""
    state, user, site = await bench_state(tmp / ("on" if metrics else "off"), metrics=metrics)
    async with serving(state, tmp / "server.log") as (url, server):
        async with ApiClient(url, site) as sapi:
            await sapi.demand("bench", SHAPE)
            fleet = await Fleet.start(sapi, [url], PILOTS)
        try:
            specs = job_specs(jobs)
            c0 = cpu_s(server)
            async with ApiClient(url, user) as api:
                for i in range(0, jobs, MAX_JOBS_PER_REQUEST):
                    await api.submit(specs[i : i + MAX_JOBS_PER_REQUEST])
            await fleet.claim()
            finished, syncs = 0, PILOTS
            while any(fleet.held.values()):
                done, _ = await fleet.finish_and_claim(1)
                finished, syncs = finished + done, syncs + PILOTS
            cpu_ms = 1000 * (cpu_s(server) - c0)
        finally:
            await fleet.close()
    assert finished == jobs, f"{finished} of {jobs} jobs finished"
    return {"server_cpu_ms_per_job": cpu_ms / jobs, "server_cpu_ms_per_sync": cpu_ms / syncs, "syncs": syncs}


async def scripted_cost(pairs: int, jobs: int) -> dict[str, object]:
    """Pairs of runs with and without metrics, alternating which goes first; the cost is the median
    of the pairs' relative differences in the server's CPU per job, with its interquartile range."""
    on: list[dict[str, float]] = []
    off: list[dict[str, float]] = []
    for i in range(pairs):
        for metrics in (True, False) if i % 2 == 0 else (False, True):
            with tempfile.TemporaryDirectory(prefix="glidein-bench-") as tmp:
                (on if metrics else off).append(await scripted_run(Path(tmp), metrics, jobs))
    costs = [a["server_cpu_ms_per_job"] / b["server_cpu_ms_per_job"] - 1 for a, b in zip(on, off, strict=True)]
    q1, median, q3 = statistics.quantiles(costs, n=4, method="inclusive") if pairs > 1 else costs * 3
    return {
        "scripted_jobs": jobs,
        "scripted_pairs": pairs,
        "scripted_syncs_per_run": on[0]["syncs"],
        "scripted_server_cpu_ms_per_job_with_metrics": round(
            statistics.median(r["server_cpu_ms_per_job"] for r in on), 4
        ),
        "scripted_server_cpu_ms_per_job_without_metrics": round(
            statistics.median(r["server_cpu_ms_per_job"] for r in off), 4
        ),
        "scripted_pair_costs": [round(c, 4) for c in costs],
        "scripted_metrics_cost": round(median, 4),
        "scripted_metrics_cost_iqr": [round(q1, 4), round(q3, 4)],
    }


def scripted_rows(result: dict[str, object]) -> list[tuple[str, str]]:
    iqr = result["scripted_metrics_cost_iqr"]
    assert isinstance(iqr, list)
    return [
        (
            f"scripted: server CPU per job with / without metrics ({result['scripted_pairs']} pairs of "
            f"{result['scripted_jobs']} jobs, {result['scripted_syncs_per_run']:.0f} syncs each)",
            f"{result['scripted_server_cpu_ms_per_job_with_metrics']:.4f} / "
            f"{result['scripted_server_cpu_ms_per_job_without_metrics']:.4f} ms",
        ),
        (
            "scripted: server CPU cost of metrics, median (IQR)",
            f"{100 * float(str(result['scripted_metrics_cost'])):+.2f} % "
            f"({100 * iqr[0]:+.2f} to {100 * iqr[1]:+.2f} %)",
        ),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--jobs", type=int, default=4000)
    p.add_argument("--out", type=Path, default=RESULTS / "metrics-scripted.json")
    args = p.parse_args()
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = asyncio.run(scripted_cost(args.pairs, args.jobs))
    result["load_average_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    for name, value in scripted_rows(result):
        print(f"{name}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
