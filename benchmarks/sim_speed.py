"""Simulator speed: a simulated week of a 10,000-core site kept busy by 1-2 h jobs, target under a minute.

Run with `python -m benchmarks.sim_speed` (add `--days 1` for a quick look). Prints a table and writes
benchmarks/results/sim_speed.json. The baseline, in the same run, is the bare event heap the simulator
is built on: pushing and popping the same number of events with nothing else done.
"""

from __future__ import annotations

import argparse
import heapq
import json
import platform
import random
import time
from pathlib import Path

from glidein_sim.engine import simulate
from glidein_sim.model import improved_rules, plain_rules
from glidein_sim.scenario import load_document, override, parse

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIO = Path(__file__).resolve().parents[1] / "examples" / "sim" / "week-10k.toml"
TARGET_S = 60.0


def bare_heap(events: int) -> float:
    rng = random.Random(1)
    heap: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    for i in range(events):
        heapq.heappush(heap, (rng.random(), i))
        if len(heap) > 10_000:
            heapq.heappop(heap)
    while heap:
        heapq.heappop(heap)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--rules", choices=("plain", "improved"), default="improved")
    args = ap.parse_args()
    doc = override(load_document(SCENARIO), "sim.duration", f"{args.days * 24:g}h")
    sc = parse(str(SCENARIO), doc)
    rules = improved_rules(sc) if args.rules == "improved" else plain_rules()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    sim = simulate(sc, rules)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    t = sim.tally
    events = t.attempts * 2 + t.pilots * 3
    bare = bare_heap(events)
    limit = TARGET_S * args.days / 7
    rows = [
        ("simulated", f"{args.days:g} days, {sc.cores:,} cores, rules {rules.label}"),
        ("jobs run (attempts)", f"{t.attempts:,}"),
        ("claims", f"{t.claims:,}"),
        ("wall time", f"{wall:.1f} s (target < {limit:.0f} s: {'ok' if wall < limit else 'MISS'})"),
        ("CPU time", f"{cpu:.1f} s"),
        ("per attempt", f"{1e6 * cpu / max(t.attempts, 1):.0f} µs CPU"),
        ("baseline: bare event heap", f"{bare:.1f} s for {events:,} events ({wall / max(bare, 1e-9):.0f}x)"),
    ]
    for name, value in rows:
        print(f"{name:<28} {value}")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "days": args.days,
        "cores": sc.cores,
        "rules": rules.label,
        "attempts": t.attempts,
        "claims": t.claims,
        "wall_s": wall,
        "cpu_s": cpu,
        "target_s": limit,
        "bare_heap_s": bare,
        "python": platform.python_version(),
    }
    (RESULTS / "sim_speed.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
