"""A pilot's dispatch with a long backlog: the cost of choosing the next job as slots free, per job start.

Run with `python -m benchmarks.pilot_dispatch` (`--sizes 1000,10000` for a quick look). A 64-slot
pilot holds N claimed jobs of a few shapes (1 and 4 cores, two walltimes, some needing more memory
than is free while the others run); one job ends at a time and the pilot starts what fits, until
the backlog is empty. Jobs are not run: only the pilot's dispatch (the real ``Pilot._dispatch``,
its slot pool and backlog) is timed. The baseline, in the same run, is the previous dispatch, which
took every waiting job out of the backlog and walked all of them on each call. Both must start the
same jobs in the same order; the benchmark checks it. Prints a table and writes
benchmarks/results/pilot_dispatch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from glidein_client.pilot.attempt import Running
from glidein_client.pilot.partition import Need, plan_starts
from glidein_client.pilot.pilot import Pilot
from glidein_client.pilot.resources import Detected
from glidein_client.pilot.settings import PilotSettings
from glidein_client.wire.schema import ClaimedJob, JobSpec

RESULTS = Path(__file__).resolve().parent / "results"
SLOTS = 64


class WalkingPilot(Pilot):
    """The previous dispatch: every waiting job out of a deque, all walked by plan_starts, the rest put back."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.waiting: deque[ClaimedJob] = deque()

    def _dispatch(self, now: float) -> None:
        if not self.waiting or self.pool.free_slots <= 0:
            return
        waiting = [self.waiting.popleft() for _ in range(len(self.waiting))]
        start, give_back = plan_starts(
            [Need(c.spec.cpus, c.spec.memory_mb, c.spec.gpus, c.spec.disk_mb, c.spec.walltime_s) for c in waiting],
            self.pool.free_slots,
            self.pool.free_gpus,
            self.mem_free,
            self.disk_free,
            self.end_time - now - self.settings.end_margin_s,
        )
        for i in give_back:
            self._report_unstarted(waiting[i], "it would not finish before the pilot's end")
        for i in start:
            self._start(waiting[i])
        taken = set(start) | set(give_back)
        self.waiting.extendleft(reversed([c for i, c in enumerate(waiting) if i not in taken]))

    def _start(self, claim: ClaimedJob) -> None:
        alloc = self.pool.allocate(claim.spec.cpus, claim.spec.gpus)
        assert alloc is not None
        self.mem_free -= claim.spec.memory_mb
        self.disk_free -= claim.spec.disk_mb
        entry = Running(claim, alloc, time.time())
        self.running[claim.attempt_id] = entry
        entry.task = asyncio.create_task(_no_run(entry))  # as the pilot does


async def _no_run(entry: Running) -> None:
    return None


def claims(n: int) -> list[ClaimedJob]:
    """Mostly 1-core short jobs, every 7th a 4-core one, every 11th too long for the pilot, every 13th
    asking for more memory than is free while the others run."""
    out = []
    for i in range(n):
        cpus = 4 if i % 7 == 0 else 1
        walltime = 90_000 if i % 11 == 0 else 600
        memory = 20_000 if i % 13 == 0 else 100
        spec = JobSpec(argv=["true"], cpus=cpus, memory_mb=memory, disk_mb=1, walltime_s=walltime)
        out.append(ClaimedJob(attempt_id=i + 1, job_id=i + 1, lease="x", spec=spec))
    return out


def make(cls: type[Pilot], scratch: Path) -> Pilot:
    detected = Detected(
        slots=SLOTS,
        core_ids=tuple(range(SLOTS)),
        memory_mb=24_000,
        gpu_ids=(),
        disk_mb=10**9,
        end_time=time.time() + 86_400,
        batch_system="local",
        batch_id="bench",
        notes=(),
    )
    return cls(object(), detected, PilotSettings(scratch=scratch))  # type: ignore[arg-type]


def drain(pilot: Pilot) -> tuple[float, list[int]]:
    """Seconds spent in dispatch until every job started or went back; the attempts in start order."""
    order: list[int] = []
    started: set[int] = set()
    ending: deque[int] = deque()  # running jobs, oldest first
    spent = 0.0
    now = time.time()
    while True:
        t0 = time.perf_counter()
        pilot._dispatch(now)
        spent += time.perf_counter() - t0
        fresh = [a for a in pilot.running if a not in started]
        order += fresh
        started.update(fresh)
        ending.extend(fresh)
        if not ending:
            return spent, order
        entry = pilot.running.pop(ending.popleft())  # the oldest running job ends
        pilot.pool.release(entry.alloc)
        pilot.mem_free += entry.claim.spec.memory_mb
        pilot.disk_free += entry.claim.spec.disk_mb


def run_one(n: int, scratch: Path, baseline: bool) -> dict[str, float | int | None]:
    jobs = claims(n)

    async def both() -> tuple[tuple[float, list[int]] | None, tuple[float, list[int]], int]:
        shaped = make(Pilot, scratch)
        shaped._run_job = _no_run  # type: ignore[method-assign]
        shaped.backlog.extend(jobs)
        after = drain(shaped)
        await asyncio.sleep(0)  # the no-op job tasks end
        before: tuple[float, list[int]] | None = None
        if baseline:
            walking = make(WalkingPilot, scratch)
            assert isinstance(walking, WalkingPilot)
            walking.waiting.extend(jobs)
            before = drain(walking)
            await asyncio.sleep(0)
            if len(walking.finished) != len(shaped.finished):
                raise SystemExit(f"N={n}: the two dispatches gave back different jobs")
        return before, after, len(shaped.finished)

    before, (new_s, new_order), given_back = asyncio.run(both())
    if before is not None and before[1] != new_order:
        raise SystemExit(f"N={n}: the two dispatches started jobs in a different order")
    started = len(new_order)
    old_s = before[0] if before is not None else None
    return {
        "backlog": n,
        "started": started,
        "given_back": given_back,
        "walk_all_s": old_s,
        "by_shape_s": new_s,
        "walk_all_us_per_start": 1e6 * old_s / max(started, 1) if old_s is not None else None,
        "by_shape_us_per_start": 1e6 * new_s / max(started, 1),
    }


def iter_sizes(text: str) -> Iterator[int]:
    for part in text.split(","):
        yield int(part.replace("_", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="500,2000,20000,100000", help="backlog lengths, comma-separated")
    ap.add_argument(
        "--baseline-max", type=int, default=2000, help="run the quadratic baseline up to this backlog (it is slow)"
    )
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in iter_sizes(args.sizes):
            rows.append(run_one(n, Path(tmp), n <= args.baseline_max))
    print(f"{'backlog':>8} {'started':>8} {'walk all (before)':>20} {'by shape (after)':>18} {'speed-up':>9}")
    for r in rows:
        old, new = r["walk_all_us_per_start"], r["by_shape_us_per_start"]
        assert new is not None
        old_text = f"{old:>14.1f} µs/job" if old is not None else f"{'(skipped)':>21}"
        ratio = f"{old / max(new, 1e-9):>8.0f}x" if old is not None else f"{'':>9}"
        print(f"{r['backlog']:>8,} {r['started']:>8,} {old_text} {new:>11.1f} µs/job {ratio}")
    RESULTS.mkdir(exist_ok=True)
    out = {"slots": SLOTS, "rows": rows, "python": platform.python_version()}
    (RESULTS / "pilot_dispatch.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
