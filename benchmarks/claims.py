"""Claim latency under fair share: one user's queue against the same queue split among many users.

Run with ``python -m benchmarks.claims --jobs 200000 --users 50``. Fills a fresh SQLite store with
idle jobs (all of one user, the baseline; then the same number split among ``--users`` users), then
times claims of 8 one-core jobs by fresh 8-core pilots; the jobs claimed count as cores in use.
Prints a table and writes benchmarks/results/claims.json. Both runs use the same machine and code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from glidein_client.wire.schema import JobSpec, PilotRegister, PilotShape, Resources, SyncRequest
from glidein_server.store.sqlite import SqliteStore

RESULTS = Path(__file__).resolve().parent / "results"
FREE = Resources(cpus=8, memory_mb=8000, disk_mb=1000)


async def claim_latency_ms(jobs: int, users: int, claims: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(f"{tmp}/glidein.db")
        await store.open()
        try:
            spec = JobSpec(argv=["true"], walltime_s=60, memory_mb=100)
            per_user = jobs // users
            for u in range(users):
                for start in range(0, per_user, 20_000):
                    await store.add_jobs(f"user{u:03d}", [spec] * min(20_000, per_user - start), time.time())
            await store.report_site("s", PilotShape(cpus=8, memory_mb=8000, disk_mb=1000, walltime_s=3600), time.time())
            times = []
            for _ in range(claims):
                pilot = await store.new_pilot("s", time.time())
                await store.register_pilot(
                    pilot, PilotRegister(resources=FREE, end_time=time.time() + 3600), time.time()
                )
                t0 = time.perf_counter()
                got = await store.sync(pilot, SyncRequest(free=FREE, lifetime_s=3000), time.time(), 60.0)
                times.append((time.perf_counter() - t0) * 1000)
                assert len(got.jobs) == 8, len(got.jobs)
        finally:
            await store.close()
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))]}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--claims", type=int, default=60)
    args = ap.parse_args()
    one = await claim_latency_ms(args.jobs, 1, args.claims)
    many = await claim_latency_ms(args.jobs, args.users, args.claims)
    print(f"claims of 8 jobs among {args.jobs:,} idle jobs ({args.claims} claims each)")
    print(f"{'queue':<28}{'median ms':>12}{'p90 ms':>10}")
    print(f"{'1 user (baseline)':<28}{one['median_ms']:>12.2f}{one['p90_ms']:>10.2f}")
    print(f"{f'{args.users} users, fair-shared':<28}{many['median_ms']:>12.2f}{many['p90_ms']:>10.2f}")
    print(f"ratio {many['median_ms'] / one['median_ms']:.1f}x")
    RESULTS.mkdir(exist_ok=True)
    out = {"jobs": args.jobs, "users": args.users, "one_user": one, "many_users": many, "host": platform.node()}
    (RESULTS / "claims.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
