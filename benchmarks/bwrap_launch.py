"""What bubblewrap adds to starting one job: `/bin/true` in the pilot's sandbox, again and again.

Run with `python -m benchmarks.bwrap_launch [--runs 60]`. Compares, in alternating rounds of the same
run: the job's /etc as one copy the pilot keeps (what the pilot does), the previous way (each of the
two dozen /etc entries bound on its own, which costs bubblewrap a bind, a read of the mount table
and a remount per entry), and no bubblewrap at all (the baseline). Prints medians in milliseconds
and writes benchmarks/results/bwrap_launch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from glidein_client.pilot.isolation import Bubblewrap, bubblewrap, system_mounts

RESULTS = Path(__file__).resolve().parent / "results"


def launch_ms(argv: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append(1000 * (time.perf_counter() - t0))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=60, help="launches per way and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="glidein-bench-") as tmp:
        box = asyncio.run(bubblewrap(tmp))
        if isinstance(box, str):
            raise SystemExit(f"bubblewrap does not work here: {box}")
        per_entry = Bubblewrap(bwrap=box.bwrap, mounts=system_mounts())  # /etc entries bound one by one
        sandbox = os.path.join(tmp, "job")
        os.mkdir(sandbox)
        ways = {
            "one /etc copy (now)": box.command(["/bin/true"], sandbox, gpus=False),
            "/etc entries bound one by one (before)": per_entry.command(["/bin/true"], sandbox, gpus=False),
            "no bubblewrap (baseline)": ["/bin/true"],
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, argv in ways.items():
                times[name] += launch_ms(argv, args.runs)
        box.close()
    medians = {name: statistics.median(t) for name, t in times.items()}
    width = max(map(len, ways))
    print(f"{'launch of /bin/true':<{width}}  median")
    for name, ms in medians.items():
        print(f"{name:<{width}}  {ms:6.1f} ms")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "median_ms": {name: round(ms, 2) for name, ms in medians.items()},
        "runs": args.runs * args.rounds,
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    (RESULTS / "bwrap_launch.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
