"""Simulator speed: a simulated week of a 10,000-core site kept busy by 1-2 h jobs, target under a minute.

Run with `python -m benchmarks.sim_speed` (add `--days 1` for a quick look). Prints a table and writes
benchmarks/results/sim_speed.json. The machine is shared, so it reports the CPU time (which load moves
little) next to the wall time and the load average; the targets are 30 s of CPU and 60 s of wall for
the week. The baseline, in the same run, is the bare event heap the simulator is built on: pushing and
popping the same number of events with nothing else done. With `--against REF` (a git commit) the
simulator as it was at REF runs too, alternating with this one (`--rounds` pairs), and both must give
the very same tally.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SCENARIO = ROOT / "examples" / "sim" / "week-10k.toml"
TARGET_WALL_S = 60.0
TARGET_CPU_S = 30.0

# One measurement, run in a child process with the tree to measure first on its path.
_CHILD = """
import dataclasses, hashlib, json, sys, time
from glidein_sim.engine import simulate
from glidein_sim.model import improved_rules, plain_rules
from glidein_sim.scenario import load_document, override, parse
from pathlib import Path
path, days, rules = sys.argv[1], float(sys.argv[2]), sys.argv[3]
sc = parse(path, override(load_document(Path(path)), "sim.duration", f"{days * 24:g}h"))
wall0, cpu0 = time.perf_counter(), time.process_time()
sim = simulate(sc, improved_rules(sc) if rules == "improved" else plain_rules())
wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
t = sim.tally
tally = json.dumps(dataclasses.asdict(t), sort_keys=True, default=str)
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "attempts": t.attempts, "claims": t.claims, "pilots": t.pilots,
                  "cores": sc.cores, "tally_sha1": hashlib.sha1(tally.encode()).hexdigest()}))
"""


def bare_heap(events: int) -> float:
    rng = random.Random(1)
    heap: list[tuple[float, int]] = []
    t0 = time.process_time()
    for i in range(events):
        heapq.heappush(heap, (rng.random(), i))
        if len(heap) > 10_000:
            heapq.heappop(heap)
    while heap:
        heapq.heappop(heap)
    return time.process_time() - t0


def measure(tree: Path, days: float, rules: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(SCENARIO), str(days), rules],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"sim_speed: the simulator in {tree} failed:\n{out.stderr}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def export(ref: str, into: Path) -> Path:
    """The tree of commit ``ref`` (its simulator and the scheduling code it runs), unpacked under ``into``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--rules", choices=("plain", "improved"), default="improved")
    ap.add_argument("--against", metavar="REF", help="also run the simulator as it was at this git commit")
    ap.add_argument("--rounds", type=int, default=1, help="measurements of each (alternating with --against)")
    args = ap.parse_args()
    load0 = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {"this": [], "ref": []}
    with tempfile.TemporaryDirectory() as tmp:
        ref_tree = export(args.against, Path(tmp)) if args.against else None
        for _ in range(max(1, args.rounds)):
            runs["this"].append(measure(ROOT, args.days, args.rules))
            if ref_tree is not None:
                runs["ref"].append(measure(ref_tree, args.days, args.rules))
    load1 = os.getloadavg()
    now = runs["this"][-1]
    cpu = statistics.median(r["cpu_s"] for r in runs["this"])
    wall = statistics.median(r["wall_s"] for r in runs["this"])
    events = now["attempts"] * 2 + now["pilots"] * 3
    bare = bare_heap(events)
    cpu_limit, wall_limit = TARGET_CPU_S * args.days / 7, TARGET_WALL_S * args.days / 7
    rows = [
        ("simulated", f"{args.days:g} days, {now['cores']:,} cores, rules {args.rules}"),
        ("jobs run (attempts)", f"{now['attempts']:,}"),
        ("claims", f"{now['claims']:,}"),
        ("CPU time", f"{cpu:.1f} s (target < {cpu_limit:.0f} s: {'ok' if cpu < cpu_limit else 'MISS'})"),
        ("wall time", f"{wall:.1f} s (target < {wall_limit:.0f} s: {'ok' if wall < wall_limit else 'MISS'})"),
        ("load average (1 min)", f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end ({os.cpu_count()} cpus)"),
        ("per attempt", f"{1e6 * cpu / max(now['attempts'], 1):.0f} µs CPU"),
        ("baseline: bare event heap", f"{bare:.1f} s CPU for {events:,} events ({cpu / max(bare, 1e-9):.0f}x)"),
    ]
    same = None
    if runs["ref"]:
        ref_cpu = statistics.median(r["cpu_s"] for r in runs["ref"])
        ref_wall = statistics.median(r["wall_s"] for r in runs["ref"])
        same = {r["tally_sha1"] for r in runs["ref"] + runs["this"]} == {now["tally_sha1"]}
        rows += [
            (f"as at {args.against}", f"{ref_cpu:.1f} s CPU, {ref_wall:.1f} s wall (this: {cpu / ref_cpu:.2f}x CPU)"),
            ("same results", "yes: identical tallies" if same else "NO: the tallies differ"),
        ]
    for name, value in rows:
        print(f"{name:<28} {value}")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "days": args.days,
        "cores": now["cores"],
        "rules": args.rules,
        "attempts": now["attempts"],
        "claims": now["claims"],
        "wall_s": wall,
        "cpu_s": cpu,
        "target_cpu_s": cpu_limit,
        "target_wall_s": wall_limit,
        "loadavg": [load0[0], load1[0]],
        "bare_heap_cpu_s": bare,
        "runs": runs["this"],
        "against": args.against,
        "against_runs": runs["ref"],
        "same_results": same,
        "python": platform.python_version(),
    }
    (RESULTS / "sim_speed.json").write_text(json.dumps(out, indent=2) + "\n")
    if same is False:
        sys.exit(1)


if __name__ == "__main__":
    main()
