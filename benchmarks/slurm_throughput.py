"""Pilots vs plain ``sbatch`` on a real single-node Slurm: throughput and first-job latency.

Run as root with Slurm installed (``bash tests/infra/install_slurm.sh``)::

    python -m benchmarks.slurm_throughput            # 1,000 jobs through pilots, 200 direct

One run starts its own Slurm (tests/infra/slurm.py) and its own server, then measures, one
after the other on the idle cluster:

- direct: 200 jobs, each its own ``sbatch --wrap true``, submitted one after the other; done
  when ``squeue --states=all`` shows every one COMPLETED (Slurm's accounting is off here);
- pilots: 1,000 ``/bin/true`` jobs submitted to the server at once, with no pilot running and
  the site client's daemon (``run_forever``, ``cycle_s`` 60) waiting; it submits 2-core pilots
  with sbatch as soon as the work arrives. Done when the server has every job done.

It prints both rates, their ratio (target >= 100x), the time from the submit to the first job
done through pilots (target <= 2 s), and that first job's way step by step, from the client's
timestamps, the pilot script's start (an ``env_setup`` line), the pilot's log and the server.
Results go to benchmarks/results/slurm_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from glidein_client.site.client import CycleReport, SiteClient
from glidein_client.site.config import SiteConfig, parse_site_config
from glidein_client.site.runners.local import LocalRunner
from glidein_client.site.schedulers.base import PilotLaunch
from glidein_client.site.schedulers.slurm import SlurmScheduler
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import JobSpec, Role
from glidein_server.server import Server, mint_token
from glidein_server.settings import ServerSettings, StateDir
from tests.infra.slurm import NODE, SlurmCluster, missing_binaries

RESULTS = Path(__file__).resolve().parent / "results"
DIRECT_NAME = "glidein-bench-direct"
SITE = "bench"
PILOT_CPUS = 2
TARGET_RATIO = 100.0
TARGET_FIRST_DONE_S = 2.0
SCRIPT_MARK = "glidein-bench: pilot script started at"
FINAL_SLURM_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


class TimedSlurmScheduler(SlurmScheduler):
    """The Slurm backend, noting when each sbatch began and returned."""

    def __init__(self, site: SiteConfig, runner: LocalRunner, *, env: dict[str, str]) -> None:
        super().__init__(site, runner, env=env)
        self.submits: list[tuple[float, float, PilotLaunch, str]] = []  # began, returned, launch, batch id

    async def submit(self, launch: PilotLaunch) -> str:
        began = time.time()
        batch_id = await super().submit(launch)
        self.submits.append((began, time.time(), launch, batch_id))
        return batch_id


class TimedSiteClient(SiteClient):
    """The site client, noting when each cycle began and ended."""

    def __init__(self, site: SiteConfig, *, runner: LocalRunner, scheduler: SlurmScheduler) -> None:
        super().__init__(site, runner=runner, scheduler=scheduler)
        self.cycles: list[tuple[float, float]] = []
        self.cycled = asyncio.Event()

    async def cycle(self) -> CycleReport:
        began = time.time()
        try:
            return await super().cycle()
        finally:
            self.cycles.append((began, time.time()))
            self.cycled.set()


# --- direct sbatch ---------------------------------------------------------------------------------


async def slurm(cluster: SlurmCluster, *argv: str, timeout_s: float = 30.0) -> str:
    result = await LocalRunner().run(list(argv), env=cluster.env, timeout_s=timeout_s)
    result.check(" ".join(argv[:2]))
    return result.stdout


async def wait_node_idle(cluster: SlurmCluster, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (await slurm(cluster, "sinfo", "--noheader", f"--nodes={NODE}", "--format=%t")).strip() != "idle":
        if time.monotonic() > deadline:
            raise RuntimeError(f"node {NODE} not idle after {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


async def direct_sbatch(cluster: SlurmCluster, n: int, work: Path) -> dict[str, Any]:
    """``n`` jobs, each its own ``sbatch --wrap true``; until squeue shows all of them ended."""
    t0 = time.time()
    ids: list[str] = []
    for _ in range(n):
        out = await slurm(
            cluster,
            "sbatch",
            "--parsable",
            f"--job-name={DIRECT_NAME}",
            "--output=/dev/null",
            f"--chdir={work}",
            "--wrap",
            "true",
        )
        ids.append(out.strip().split(";")[0])
    submitted_s = time.time() - t0
    first_done_s: float | None = None
    while True:
        out = await slurm(
            cluster, "squeue", "--me", "--states=all", "--noheader", "--format=%i %T", f"--name={DIRECT_NAME}"
        )
        states = dict(line.split() for line in out.splitlines() if line.strip())
        ended = [states[i] for i in ids if states.get(i) in FINAL_SLURM_STATES]
        if ended and first_done_s is None:
            first_done_s = time.time() - t0
        if len(ended) == n:
            break
        await asyncio.sleep(0.2)
    elapsed = time.time() - t0
    return {
        "jobs": n,
        "submit_s": round(submitted_s, 3),
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(n / elapsed, 3),
        "first_done_s": round(first_done_s or elapsed, 3),
        "failed": sum(1 for s in ended if s != "COMPLETED"),
    }


# --- through pilots --------------------------------------------------------------------------------


def site_config(url: str, token_file: Path, scratch: Path, max_pilots: int) -> SiteConfig:
    raw = {
        "site": {
            "name": SITE,
            "server_url": url,
            "token_file": str(token_file),
            "scratch_dir": str(scratch),
            "scheduler": "slurm",
            "cycle_s": 60,
        },
        "pilot": {"cpus": PILOT_CPUS, "memory": "2G", "disk": "1G", "walltime": "30m", "idle_timeout": "60s"},
        "limits": {"max_pilots": max_pilots, "max_idle_pilots": max_pilots, "max_submit_per_cycle": max_pilots},
        # Marks when Slurm started the pilot's script, before the pilot's Python starts.
        "batch": {"env_setup": [f'echo "{SCRIPT_MARK} $(date +%s.%N)" >&2']},
    }
    return parse_site_config(raw, str(scratch / f"{SITE}.toml"))


async def through_pilots(cluster: SlurmCluster, n: int, work: Path, max_pilots: int) -> dict[str, Any]:
    state = StateDir(work / "server")
    state.write(ServerSettings(port=0, heartbeat_s=2.0, insecure_http=True))  # loopback only
    scratch = work / "scratch"
    scratch.mkdir(mode=0o755)
    async with Server(str(state.root)) as srv:
        user = await mint_token(srv.store, Role.USER, "bench")
        token_file = work / "site.token"
        token_file.write_text(await mint_token(srv.store, Role.SITE, SITE) + "\n")
        token_file.chmod(0o600)
        config = site_config(srv.url, token_file, scratch, max_pilots)
        scheduler = TimedSlurmScheduler(config, LocalRunner(), env=cluster.env)
        client = TimedSiteClient(config, runner=LocalRunner(), scheduler=scheduler)
        stop = asyncio.Event()
        async with client, ApiClient(srv.url, user) as api:
            daemon = asyncio.create_task(client.run_forever(stop=stop))
            try:
                await asyncio.wait_for(client.cycled.wait(), 30)  # the first cycle finds no work...
                await asyncio.sleep(0.5)  # ...and the daemon waits for news: its next tick is a minute away
                t0 = time.time()
                ids = await api.submit(
                    [JobSpec(argv=["/bin/true"], cpus=1, memory_mb=100, disk_mb=1, walltime_s=60) for _ in range(n)]
                )
                accepted = time.time()
                while True:
                    counts = (await api.summary()).jobs
                    if counts.get("done", 0) + counts.get("failed", 0) >= n:
                        break
                    await asyncio.sleep(0.1)
                jobs = (await api.list_jobs(ids=ids, limit=n)).jobs
            finally:
                stop.set()
                await asyncio.wait_for(daemon, 30)
                await end_pilots(cluster, scheduler)
    finished = sorted(j.finished_at for j in jobs if j.finished_at is not None)
    elapsed = finished[-1] - t0
    first = scheduler.submits[0]
    marks = first_job_marks(t0, accepted, client.cycles, first, finished[0], Path(first[2].workdir) / "pilot.err")
    return {
        "jobs": n,
        "pilots_submitted": len(scheduler.submits),
        "pilot_cpus": PILOT_CPUS,
        "client_cycles": len(client.cycles),
        "submit_s": round(accepted - t0, 3),
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(n / elapsed, 1),
        "steady_rate_per_s": round((n - 1) / max(finished[-1] - finished[0], 1e-6), 1),
        "first_done_s": round(finished[0] - t0, 3),
        "failed": sum(1 for j in jobs if j.state.value != "done"),
        "first_job_marks": marks,
    }


async def end_pilots(cluster: SlurmCluster, scheduler: SlurmScheduler) -> None:
    active = [p.batch_id for p in await scheduler.status() if p.state.active]
    await scheduler.cancel(active)
    await wait_node_idle(cluster)


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ pilot: (.*)$")


def pilot_log_times(path: Path) -> list[tuple[float, str]]:
    """(epoch seconds, message) of each line of a pilot's log; the script mark included."""
    out: list[tuple[float, str]] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith(SCRIPT_MARK):
            out.append((float(line[len(SCRIPT_MARK) :].strip()), "script started"))
        elif m := _LOG_TIME.match(line):
            out.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), m.group(2)))
    return out


def first_job_marks(
    t0: float,
    accepted: float,
    cycles: list[tuple[float, float]],
    submit: tuple[float, float, PilotLaunch, str],
    first_done: float,
    pilot_log: Path,
) -> dict[str, float | None]:
    """Seconds after the submit at which the first job passed each step (None: not seen)."""
    lines = pilot_log_times(pilot_log)

    def at(pattern: str, last: bool = False) -> float | None:
        hits = [t for t, msg in lines if re.search(pattern, msg)]
        return (hits[-1] if last else hits[0]) if hits else None

    cycle = next((began for began, _ in cycles if began >= accepted), None)
    marks: list[tuple[str, float | None]] = [
        ("server accepted the jobs", accepted),
        ("client cycle began (woken by the server)", cycle),
        ("sbatch began (after demand, squeue, pilot token)", submit[0]),
        ("sbatch returned", submit[1]),
        ("Slurm started the pilot script", at("^script started$")),
        ("pilot detected its allocation (Python start, imports, squeue)", at("^detected ", last=True)),
        ("pilot self-test done", at("^self-test ", last=True)),
        ("pilot registered", at(r"^pilot \d+ started")),
        ("first job done at the server (reported)", first_done),
    ]
    return {name: None if t is None else round(t - t0, 3) for name, t in marks}


async def import_cost_s() -> dict[str, float]:
    """Python start-up alone, and with the pilot's imports: the best of three runs each."""

    async def best(*argv: str) -> float:
        times = []
        for _ in range(3):
            began = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(sys.executable, *argv)
            await proc.wait()
            times.append(time.perf_counter() - began)
        return min(times)

    bare = await best("-c", "pass")
    pilot = await best("-c", "import glidein_client.pilot.cli")
    return {"python_start_s": round(bare, 3), "python_start_and_pilot_imports_s": round(pilot, 3)}


# --- the run ---------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace, cluster: SlurmCluster, work: Path) -> dict[str, Any]:
    load_1m = os.getloadavg()[0]  # other work on this machine skews both measurements
    node_cpus = int((await slurm(cluster, "sinfo", "--noheader", "--format=%c")).split()[0])
    max_pilots = max(1, node_cpus // PILOT_CPUS)
    await wait_node_idle(cluster)
    direct_dir = work / "direct"
    direct_dir.mkdir(mode=0o755)
    direct = await direct_sbatch(cluster, args.direct, direct_dir)
    await wait_node_idle(cluster)
    pilots = await through_pilots(cluster, args.jobs, work, max_pilots)
    imports = await import_cost_s()
    version = (await slurm(cluster, "sinfo", "--version")).strip()
    ratio = pilots["rate_per_s"] / direct["rate_per_s"]
    return {
        "benchmark": "slurm-pilots-vs-direct-sbatch",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "slurm": version,
            "node_cpus": node_cpus,
            "load_avg_1m_at_start": round(load_1m, 2),
        },
        "direct": direct,
        "pilots": pilots,
        "ratio": round(ratio, 1),
        "target_ratio": TARGET_RATIO,
        "first_done_s": pilots["first_done_s"],
        "target_first_done_s": TARGET_FIRST_DONE_S,
        "pilot_startup": imports,
    }


def print_report(r: dict[str, Any]) -> None:
    d, p = r["direct"], r["pilots"]
    rows = [
        (f"direct sbatch --wrap true, {d['jobs']} jobs", f"{d['rate_per_s']:.2f} jobs/s ({d['elapsed_s']:.1f} s)"),
        (
            f"glidein pilots, {p['jobs']} jobs ({p['pilots_submitted']} pilot(s) x {p['pilot_cpus']} cores)",
            f"{p['rate_per_s']:.1f} jobs/s ({p['elapsed_s']:.2f} s; {p['steady_rate_per_s']:.0f} jobs/s once running)",
        ),
        (f"ratio (target >= {r['target_ratio']:.0f}x)", f"{r['ratio']:.0f}x"),
        (
            f"first job done after submit, no pilot running (target <= {r['target_first_done_s']:.0f} s)",
            f"{p['first_done_s']:.2f} s",
        ),
        ("direct: first job done after first sbatch", f"{d['first_done_s']:.2f} s"),
        ("failed jobs (direct / pilots)", f"{d['failed']} / {p['failed']}"),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("\nthe first job through pilots, seconds after the submit (step: time taken)")
    previous = 0.0
    for name, t in p["first_job_marks"].items():
        if t is None:
            print(f"  {'?':>7}  {name} (not seen)")
            continue
        print(f"  {t:7.3f}  {name} (+{t - previous:.3f})")
        previous = t
    s = r["pilot_startup"]
    print(
        f"\npython start-up {s['python_start_s']:.3f} s; with the pilot's imports "
        f"{s['python_start_and_pilot_imports_s']:.3f} s (measured apart, best of 3)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=1000, help="jobs through pilots")
    p.add_argument("--direct", type=int, default=200, help="jobs submitted directly with sbatch")
    p.add_argument("--out", type=Path, default=RESULTS / "slurm_throughput.json")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("This benchmark starts munged, slurmctld and slurmd: run it as root.")
    missing = missing_binaries()
    if missing:
        sys.exit(f"Slurm is not installed (missing {', '.join(missing)}): run tests/infra/install_slurm.sh as root.")
    work = Path(tempfile.mkdtemp(prefix="glidein-bench-slurm-", dir="/tmp"))
    work.chmod(0o755)  # Slurm jobs read the pilot scripts and write their logs here
    try:
        with SlurmCluster() as cluster:
            result = asyncio.run(main_async(args, cluster, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
