"""The server's CPU per pilot sync: `python -m benchmarks.sync_cpu [--backend postgres] [--against REF]`.

A real ``glidein-server serve`` on a fresh database (SQLite, or with ``--backend postgres`` one of
a throw-away PostgreSQL cluster started here, as the tests do) with ``--jobs`` idle jobs (mixed 1- and
4-core, as in ``benchmarks.scale``); 8-core pilots then claim 32 at once (their first claim),
send heartbeats (``--heartbeats`` passes over every pilot) and finish-and-claim. The figure is the
server process's CPU time (user + system, as /proc/PID/stat counts it, both threads) per sync of
each kind, which the load of a shared machine moves far less than the rates; on PostgreSQL also the
database cluster's CPU per sync (all its processes). With ``--against
REF`` (a git commit) the server as it was at REF runs too, in the same run, alternating which goes
first (``--rounds`` pairs); the medians and each one's ratio to REF are printed. The pilots (this
tree's API client) run in this process, on the same cores. Writes benchmarks/results/sync_cpu.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import psutil

from benchmarks.fleet import Fleet
from benchmarks.scale import cpu_s, database_cpu_s, job_specs, serving
from glidein_client.wire.api import ApiClient
from glidein_client.wire.schema import MAX_JOBS_PER_REQUEST
from glidein_server.settings import StateDir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SERVER = ("claim_sync_ms", "heartbeat_ms", "finish_claim_sync_ms")
DATABASE = ("db_claim_sync_ms", "db_heartbeat_ms", "db_finish_claim_sync_ms")

# Run in a child with the tree to measure first on its path: a state directory and two tokens.
_SETUP = """
import asyncio, json, sys
from glidein_client.wire.schema import Role
from glidein_server.server import mint_token, open_store
from glidein_server.settings import ServerSettings, StateDir
state = StateDir(sys.argv[1])
rates = {f"rate_{r}_per_s": 0.0 for r in ("operator", "user", "site", "pilot", "anonymous")}
state.write(ServerSettings(database=sys.argv[2], insecure_http=True, lease_s=600, heartbeat_s=60,
                           pilot_timeout_s=1800, **rates))
async def main():
    store = open_store(state, state.load())
    await store.open()
    user = await mint_token(store, Role.USER, "bench")
    site = await mint_token(store, Role.SITE, "bench")
    await store.close()
    import glidein_server
    print(json.dumps({"user": user, "site": site, "code": glidein_server.__file__}))
asyncio.run(main())
"""


def export(ref: str, into: Path) -> Path:
    """The tree of commit ``ref``, unpacked under ``into``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


class Database:
    """Where each measurement's fresh database is: SQLite in its state directory, or a new database
    of one PostgreSQL cluster (whose processes' CPU is read too)."""

    def __init__(self, pg: Any = None) -> None:
        self.pg = pg
        self.postmaster = None
        if pg is not None:
            self.postmaster = psutil.Process(int((pg.root / "data" / "postmaster.pid").read_text().split()[0]))
        self.made = 0

    def new(self) -> str:
        if self.pg is None:
            return "glidein.db"
        self.made += 1
        self.pg.run("createdb", f"sync{self.made}")
        return str(self.pg.url(f"sync{self.made}"))

    def drop(self) -> None:
        if self.pg is not None:
            self.pg.run("dropdb", f"sync{self.made}")

    def cpu_s(self) -> float:
        return database_cpu_s(self.postmaster)


async def measure(tree: Path, state: Path, db: Database, jobs: int, pilots: int, heartbeats: int) -> dict[str, float]:
    """One server from ``tree`` on a fresh database: its CPU (and the database's) per sync of each kind, in ms."""
    setup = subprocess.run(  # noqa: ASYNC221 - before the server starts, nothing else runs
        [sys.executable, "-c", _SETUP, str(state), db.new()],
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if setup.returncode != 0:
        sys.exit(f"sync_cpu: setting up a server from {tree} failed:\n{setup.stderr}")
    tokens = json.loads(setup.stdout.strip().splitlines()[-1])
    if not tokens["code"].startswith(str(tree)):
        sys.exit(f"sync_cpu: the server code came from {tokens['code']}, not from {tree}")
    r: dict[str, float] = {}
    async with serving(StateDir(state), state / "server.log", tree) as (url, server):
        async with ApiClient(url, tokens["user"]) as api:
            specs = job_specs(jobs)
            for i in range(0, jobs, MAX_JOBS_PER_REQUEST):
                await api.submit(specs[i : i + MAX_JOBS_PER_REQUEST])
        async with ApiClient(url, tokens["site"]) as sapi:
            fleet = await Fleet.start(sapi, [url], pilots)
        try:
            c0, d0 = cpu_s(server), db.cpu_s()
            claimed, _ = await fleet.claim()
            r["claim_sync_ms"] = 1000 * (cpu_s(server) - c0) / pilots
            r["db_claim_sync_ms"] = 1000 * (db.cpu_s() - d0) / pilots
            r["claimed_jobs"] = claimed
            c0, d0 = cpu_s(server), db.cpu_s()
            for _ in range(heartbeats):
                await fleet.heartbeats()
            r["heartbeat_ms"] = 1000 * (cpu_s(server) - c0) / (pilots * heartbeats)
            r["db_heartbeat_ms"] = 1000 * (db.cpu_s() - d0) / (pilots * heartbeats)
            c0, d0 = cpu_s(server), db.cpu_s()
            finished, _ = await fleet.finish_and_claim(1)
            r["finish_claim_sync_ms"] = 1000 * (cpu_s(server) - c0) / min(pilots, 512)
            r["db_finish_claim_sync_ms"] = 1000 * (db.cpu_s() - d0) / min(pilots, 512)
            r["finished_jobs"] = finished
        finally:
            await fleet.close()
    db.drop()
    return r


def summary(runs: list[dict[str, float]], measures: tuple[str, ...]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in measures}


def pair_ratios(
    this: list[dict[str, float]], ref: list[dict[str, float]], measures: tuple[str, ...]
) -> dict[str, list[float]]:
    """Each round's this/ref ratio (the pair ran back to back, so under about the same load), sorted."""
    return {k: sorted(round(a[k] / b[k], 3) for a, b in zip(this, ref, strict=True)) for k in measures}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    load0 = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {"this": [], "ref": []}
    measures = SERVER + DATABASE if args.backend == "postgres" else SERVER
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="glidein-sync-cpu-"))
        db = Database()
        if args.backend == "postgres":
            sys.path.insert(0, str(ROOT))
            from tests.infra.postgres import running_postgres

            db = Database(stack.enter_context(running_postgres()))
        trees = {"this": ROOT}
        if args.against:
            trees["ref"] = export(args.against, Path(tmp) / "ref")
        for n in range(max(1, args.rounds)):
            order = list(trees) if n % 2 == 0 else list(trees)[::-1]
            for name in order:
                state = Path(tmp) / f"{name}-{n}"
                state.mkdir()
                result = await measure(trees[name], state, db, args.jobs, args.pilots, args.heartbeats)
                runs[name].append(result)
                print(f"round {n + 1} {name:>4}: " + ", ".join(f"{k} {result[k]:.3f}" for k in measures), flush=True)
    return {
        "backend": args.backend,
        "measures": measures,
        "jobs": args.jobs,
        "pilots": args.pilots,
        "heartbeat_passes": args.heartbeats,
        "against": args.against,
        "loadavg": [load0[0], os.getloadavg()[0]],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "this": summary(runs["this"], measures),
        "ref": summary(runs["ref"], measures) if runs["ref"] else None,
        "pair_ratios": pair_ratios(runs["this"], runs["ref"], measures) if runs["ref"] else None,
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite", help="the store to measure on")
    ap.add_argument("--jobs", type=int, default=20_000, help="idle jobs queued before the pilots come")
    ap.add_argument("--pilots", type=int, default=1_000, help="8-core pilots (each claims once, 32 at a time)")
    ap.add_argument("--heartbeats", type=int, default=3, help="heartbeat passes over every pilot")
    ap.add_argument("--against", metavar="REF", help="also run the server as it was at this git commit")
    ap.add_argument("--rounds", type=int, default=3, help="measurements of each (alternating with --against)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    out = asyncio.run(main_async(args))
    head = f"\n{args.backend + ': CPU per sync, median ms':34}{'this':>10}"
    print(head + (f"{'at ' + str(args.against):>16}{'ratio':>8}   ratio of each pair" if out["ref"] else ""))
    for k in out["measures"]:
        line = f"{k:34}{out['this'][k]:>10.3f}"
        if out["ref"]:
            pairs = out["pair_ratios"][k]
            line += f"{out['ref'][k]:>16.3f}{out['this'][k] / out['ref'][k]:>8.2f}"
            line += f"   median {statistics.median(pairs):.2f} ({pairs[0]:.2f} to {pairs[-1]:.2f})"
        print(line)
    print(
        f"load average (1 min): {out['loadavg'][0]:.1f} at the start, {out['loadavg'][1]:.1f} at the end "
        f"({out['cpus']} cpus); {time.perf_counter() - t0:.0f} s"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sync_cpu.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
