"""Cancel latency: from `glidein cancel` of a RUNNING job to its process being killed on a busy pilot.

A real server (SQLite) and real pilot processes whose every core runs a job, with more jobs
waiting, so the pilots are busy and not asking for work. Each sample cancels one running job and
times (a) until its process is gone from this machine and (b) until the server has the attempt's
end. Two paths in the same run, on the same machine:

- ``wake``: the server answers the pilot's pending sync with the cancel at once (the product);
- ``heartbeat``: that wake-up switched off in this process, so the cancel waits for the pilot's
  next heartbeat -- how cancels travelled before (the baseline).

Run with ``python -m benchmarks.cancel_latency``. Prints a table and writes
benchmarks/results/cancel_latency.json. Target: p99 kill latency <= 1 s on the wake path.
``--action hold`` times ``glidein hold`` of a running job instead (the same path to the pilot; the
job stays held) and writes benchmarks/results/hold_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobSpec, JobState, JobView, PilotShape, Role
from glidein_server.server import Server, mint_token
from glidein_server.settings import ServerSettings, StateDir

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_P99_S = 1.0


def marker_alive(marker: str) -> bool:
    for proc in psutil.process_iter(["cmdline"]):
        if proc.info["cmdline"] == ["sleep", marker]:
            return True
    return False


async def start_pilot(srv: Server, tmp: Path, n: int, cpus: int) -> asyncio.subprocess.Process:
    site = await mint_token(srv.store, Role.SITE, "bench")
    async with ApiClient(srv.url, site) as api:
        await api.demand("bench", PilotShape(cpus=cpus, memory_mb=cpus * 512, disk_mb=1000, walltime_s=3600))
        grant = await api.new_pilot("bench")
    token = tmp / f"pilot-{n}.token"
    token.write_text(grant.token)
    token.chmod(0o600)
    log = open(tmp / f"pilot-{n}.log", "wb")  # noqa: ASYNC230 - handed to the child
    # the flags of `glidein-pilot run`, local allocation
    argv = ["--server-url", srv.url, "--token-file", str(token), "--site", "bench", "--cpus", str(cpus)]
    argv += ["--memory-mb", str(cpus * 512), "--disk-mb", "1000", "--walltime-s", "3600"]
    argv += ["--idle-timeout-s", "60", "--scratch", str(tmp / "scratch")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "glidein_client.pilot",
        "run",
        *argv,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return proc


class Bench:
    """The user's side of one measurement: keeps every core busy with more jobs waiting, cancels one."""

    def __init__(self, api: ApiClient, slots: int, heartbeat_s: float, action: str = "cancel") -> None:
        self.api, self.slots, self.heartbeat_s = api, slots, heartbeat_s
        self.action = action
        self.counter = 0

    async def submit(self, n: int) -> None:
        specs = []
        for _ in range(n):
            self.counter += 1
            marker = f"{600 + self.counter / 10_000:.4f}"  # `sleep 600.0001`: its process is found by argv
            specs.append(JobSpec(argv=["sleep", marker], cpus=1, memory_mb=64, disk_mb=1, walltime_s=900))
        await self.api.submit(specs)

    async def running(self) -> list[JobView]:
        """Running jobs whose process is up, once every slot has one (or a minute passed)."""
        deadline = time.monotonic() + 60
        while True:
            jobs = (await self.api.list_jobs(state="running")).jobs
            live = [j for j in jobs if marker_alive(j.spec.argv[1])]
            if len(live) >= self.slots or time.monotonic() > deadline:
                return live
            await asyncio.sleep(0.1)

    async def cancel_one(self, job: JobView) -> tuple[float, float]:
        """Seconds from the cancel request until the job's process is gone, and until the server has its end."""
        marker = job.spec.argv[1]
        t0 = time.monotonic()
        await (self.api.hold(job.id, "benchmark") if self.action == "hold" else self.api.cancel(job.id))
        killed = reported = None
        while killed is None or reported is None:
            now = time.monotonic()
            if killed is None and not marker_alive(marker):
                killed = now - t0
            if reported is None:
                attempts = await self.api.attempts(job.id)
                if attempts and attempts[-1].finished_at is not None:
                    reported = time.monotonic() - t0
            if now - t0 > 5 * self.heartbeat_s + 30:
                raise SystemExit(f"job {job.id} was not killed within {now - t0:.0f} s")
            await asyncio.sleep(0.01)
        return killed, reported


async def measure(
    path: str, samples: int, pilots: int, cpus: int, heartbeat_s: float, tmp: Path, action: str = "cancel"
) -> dict[str, object]:
    state = StateDir(tmp / "server")
    state.write(ServerSettings(port=0, heartbeat_s=heartbeat_s, insecure_http=True))  # loopback only
    kill_s: list[float] = []
    report_s: list[float] = []
    async with Server(str(state.root)) as srv:
        if path == "heartbeat":
            srv.api.news.pilots.wake = lambda pilot_id: None  # type: ignore[method-assign]
        user = await mint_token(srv.store, Role.USER, "bench")
        procs = [await start_pilot(srv, tmp, n, cpus) for n in range(pilots)]
        try:
            async with ApiClient(srv.url, user) as api:
                bench = Bench(api, pilots * cpus, heartbeat_s, action)
                await bench.submit(pilots * cpus * 2)  # every core busy, as many waiting
                for i in range(samples):
                    live = await bench.running()
                    if not live:
                        raise SystemExit("no running job to cancel: the pilots did not start jobs (see their logs)")
                    await asyncio.sleep(0.5 + (i % 7) * heartbeat_s / 7)  # at varied points of a heartbeat
                    killed, reported = await bench.cancel_one(live[0])
                    kill_s.append(killed)
                    report_s.append(reported)
                    await bench.submit(1)
                states = (await api.summary()).jobs
        finally:
            for proc in procs:
                if proc.returncode is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            await asyncio.gather(*(p.wait() for p in procs))
    return {
        "samples": samples,
        "kill_s": stats(kill_s),
        "report_s": stats(report_s),
        "cancelled": states.get(JobState.CANCELLED.value, 0),
        "held": states.get(JobState.HELD.value, 0),
    }


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(p99, 3),
        "max": round(ordered[-1], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="glidein-bench-") as tmp:
        wake = await measure(
            "wake", args.samples, args.pilots, args.cpus, args.heartbeat_s, Path(tmp) / "wake", args.action
        )
    with tempfile.TemporaryDirectory(prefix="glidein-bench-") as tmp:
        base = await measure(
            "heartbeat", args.baseline_samples, args.pilots, args.cpus, args.heartbeat_s, Path(tmp) / "hb", args.action
        )
    p99 = wake["kill_s"]["p99"]  # type: ignore[index]
    return {
        "benchmark": f"{args.action}-latency-busy-pilot",
        "pilots": args.pilots,
        "cpus_per_pilot": args.cpus,
        "heartbeat_s": args.heartbeat_s,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "wake": wake,
        "heartbeat_baseline": base,
        "target_p99_s": TARGET_P99_S,
        "meets_target": p99 <= TARGET_P99_S,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=30, help="cancels timed on the wake path (default 30)")
    p.add_argument("--baseline-samples", type=int, default=8, help="cancels timed on the heartbeat path (default 8)")
    p.add_argument("--pilots", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="cores (job slots) per pilot")
    p.add_argument("--heartbeat-s", type=float, default=10.0, help="the server's heartbeat_s (default: its default)")
    p.add_argument("--action", choices=("cancel", "hold"), default="cancel", help="what stops the job (default cancel)")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/ACTION_latency.json")
    args = p.parse_args()
    args.out = args.out or RESULTS / f"{args.action}_latency.json"
    result = asyncio.run(main_async(args))
    wake, base = result["wake"], result["heartbeat_baseline"]
    assert isinstance(wake, dict) and isinstance(base, dict)
    print(f"{'path':<34} {'n':>3} {'kill p50':>9} {'kill p99':>9} {'kill max':>9} {'reported p99':>13}")
    for name, r in (("wake the pending sync (product)", wake), ("next heartbeat (baseline)", base)):
        k, rep = r["kill_s"], r["report_s"]
        print(
            f"{name:<34} {r['samples']:>3} {k['p50']:>8.3f}s {k['p99']:>8.3f}s {k['max']:>8.3f}s {rep['p99']:>12.3f}s"
        )
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(f"target: p99 kill latency <= {TARGET_P99_S:.1f} s with heartbeat_s = {args.heartbeat_s:g}: {verdict}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
