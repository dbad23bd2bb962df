"""Per-site demand: pure functions over job shapes, site pilot shapes and free capacity.

The store keeps a running count of idle jobs per shape; nothing here scans jobs.
A shape eligible at k sites counts 1/k at each. Free capacity of a site's live pilots
is subtracted only where a waiting job could actually use it (free cores without the
memory, GPUs or remaining lifetime for any waiting job do not count).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from glidein_client.wire.schema import Demand, PilotShape


@dataclass(frozen=True)
class Shape:
    cpus: int
    memory_mb: int
    gpus: int
    disk_mb: int
    walltime_s: int
    sites: frozenset[str] | None  # None: any site
    count: int


@dataclass(frozen=True)
class FreeCapacity:
    cpus: int
    memory_mb: int
    gpus: int
    disk_mb: int
    lifetime_s: float


#: Pilots in a row that may fail at start before a site backs off.
START_FAILURES_BEFORE_BACKOFF = 3


def start_backoff_s(failures: int) -> float:
    """How long a site waits after its last pilot failed at start: 0 until 3 in a row, then 1 min doubling to 1 h."""
    if failures < START_FAILURES_BEFORE_BACKOFF:
        return 0.0
    return float(min(60 * 2 ** (failures - START_FAILURES_BEFORE_BACKOFF), 3600))


def fits(shape: Shape, cpus: int, memory_mb: int, gpus: int, disk_mb: int, lifetime_s: float) -> bool:
    return (
        shape.cpus <= cpus
        and shape.memory_mb <= memory_mb
        and shape.gpus <= gpus
        and shape.disk_mb <= disk_mb
        and shape.walltime_s <= lifetime_s
    )


#: A pilot spends its first seconds starting (resources, self-tests, registration) and stops taking
#: work this long before its end (the pilot's end margin): jobs get the rest of its walltime.
PILOT_START_S = 55
PILOT_END_MARGIN_S = 5


def job_walltime_limit_s(pilot: PilotShape) -> int:
    """The longest walltime a job may ask for and still fit a fresh pilot of this shape."""
    return max(0, pilot.walltime_s - PILOT_START_S - PILOT_END_MARGIN_S)


def fits_pilot(shape: Shape, pilot: PilotShape) -> bool:
    return fits(shape, pilot.cpus, pilot.memory_mb, pilot.gpus, pilot.disk_mb, job_walltime_limit_s(pilot))


def eligible_sites(shape: Shape, site_shapes: Mapping[str, PilotShape]) -> list[str]:
    """Sites that may run this shape (allowed by the job) and whose pilots are big enough."""
    return sorted(
        name
        for name, pilot in site_shapes.items()
        if (shape.sites is None or name in shape.sites) and fits_pilot(shape, pilot)
    )


def per_pilot(shape: Shape, pilot: PilotShape) -> int:
    """How many jobs of this shape one fresh pilot holds at once (>= 1 when it fits)."""
    n = pilot.cpus // shape.cpus
    if shape.memory_mb:
        n = min(n, pilot.memory_mb // shape.memory_mb)
    if shape.gpus:
        n = min(n, pilot.gpus // shape.gpus)
    if shape.disk_mb:
        n = min(n, pilot.disk_mb // shape.disk_mb)
    return max(n, 1)


#: A site never drops below this weight, so it keeps getting some work and can show it recovered.
MIN_WEIGHT = 0.1


def site_weight(health: Mapping[str, float] | None, site: str) -> float:
    return max(MIN_WEIGHT, health.get(site, 1.0)) if health else 1.0


def site_demand(
    site: str,
    shapes: Sequence[Shape],
    site_shapes: Mapping[str, PilotShape],
    free: Sequence[FreeCapacity],
    health: Mapping[str, float] | None = None,
) -> Demand:
    """Demand of ``site`` (whose pilot shape must be in ``site_shapes``).

    A shape eligible at several sites is split among them by weight: each site's recent
    success rate (``health``, 1.0 when unknown), never below ``MIN_WEIGHT``. Healthy sites
    weigh the same, so a job eligible at k healthy sites counts 1/k at each.
    """
    pilot = site_shapes[site]
    share: dict[Shape, float] = {}
    unfit = 0
    for shape in shapes:
        if shape.count <= 0:
            continue
        allowed = shape.sites is None or site in shape.sites
        if not allowed:
            continue
        if not fits_pilot(shape, pilot):
            unfit += shape.count
            continue
        total = sum(site_weight(health, s) for s in eligible_sites(shape, site_shapes))
        share[shape] = shape.count * site_weight(health, site) / max(total, 1e-9)

    # Net of what live pilots of this site can take right now (largest jobs first). The shares are
    # kept in a list beside the shapes while the pilots are walked (a Shape hashes all its fields).
    order = sorted(share, key=lambda s: (-s.cpus, -s.gpus, -s.memory_mb))
    lefts = [share[shape] for shape in order]
    for cap in free:
        cpus, mem, gpus, disk = cap.cpus, cap.memory_mb, cap.gpus, cap.disk_mb
        for i, shape in enumerate(order):
            left = lefts[i]
            if left <= 0 or not fits(shape, cpus, mem, gpus, disk, cap.lifetime_s):
                continue
            room = cpus // shape.cpus
            if shape.memory_mb:
                room = min(room, mem // shape.memory_mb)
            if shape.gpus:
                room = min(room, gpus // shape.gpus)
            if shape.disk_mb:
                room = min(room, disk // shape.disk_mb)
            take = min(left, float(room))
            if take <= 0:
                continue
            lefts[i] = left - take
            used = math.ceil(take)
            cpus -= used * shape.cpus
            mem -= used * shape.memory_mb
            gpus -= used * shape.gpus
            disk -= used * shape.disk_mb
    for shape, left in zip(order, lefts, strict=True):  # the shapes keep their order in ``share``
        share[shape] = left

    jobs = sum(share.values())
    pilots = sum(n / per_pilot(s, pilot) for s, n in share.items())
    return Demand(
        site=site,
        jobs=round(jobs, 3),
        cpus=round(sum(n * s.cpus for s, n in share.items()), 3),
        memory_mb=round(sum(n * s.memory_mb for s, n in share.items()), 3),
        gpus=round(sum(n * s.gpus for s, n in share.items()), 3),
        pilots=math.ceil(pilots - 1e-9) if pilots > 0 else 0,
        unfit_jobs=unfit,
    )


def unrunnable_note(
    cpus: int,
    memory_mb: int,
    gpus: int,
    disk_mb: int,
    walltime_s: int,
    sites: frozenset[str] | None,
    site_shapes: Mapping[str, PilotShape],
) -> str | None:
    """A plain sentence when no known site can run a job of this shape, else None."""
    shape = Shape(cpus, memory_mb, gpus, disk_mb, walltime_s, sites, 1)
    if not site_shapes:
        return "No site has reported its pilots yet, so it is not known whether any site can run this job."
    if eligible_sites(shape, site_shapes):
        return None
    allowed = {n: p for n, p in site_shapes.items() if sites is None or n in sites}
    if not allowed:
        return (
            f"No site can run this job: it may only run at {', '.join(sorted(sites or []))}, "
            "and none of those sites is known. Check the site names or ask an operator."
        )
    biggest = max(allowed.items(), key=lambda kv: (kv[1].cpus, kv[1].memory_mb))
    name, p = biggest
    parts = []
    if cpus > p.cpus:
        parts.append(f"{cpus} cpus (largest pilot: {p.cpus})")
    if memory_mb > max(x.memory_mb for x in allowed.values()):
        parts.append(f"{memory_mb} MB memory (largest pilot: {max(x.memory_mb for x in allowed.values())} MB)")
    if gpus > max(x.gpus for x in allowed.values()):
        parts.append(f"{gpus} GPUs (most any pilot has: {max(x.gpus for x in allowed.values())})")
    if disk_mb > max(x.disk_mb for x in allowed.values()):
        parts.append(f"{disk_mb} MB disk (largest pilot: {max(x.disk_mb for x in allowed.values())} MB)")
    longest_name, longest = max(allowed.items(), key=lambda kv: kv[1].walltime_s)
    limit = job_walltime_limit_s(longest)
    if walltime_s > limit:
        overhead = longest.walltime_s - limit
        parts.append(
            f"a walltime of {_span(walltime_s)}, and the longest pilot (site {longest_name}) has "
            f"{_span(longest.walltime_s)} minus {_span(overhead)} for its start-up and end margin"
        )
        fix = (
            f"lower --walltime to at most {_span(limit)}, or ask an operator for longer pilots"
            if len(parts) == 1
            else "lower the request or ask an operator for a site with bigger pilots"
        )
    else:
        fix = "lower the request or ask an operator for a site with bigger pilots"
    what = "; ".join(parts) or f"more than any single pilot offers (e.g. site {name})"
    return f"No site can run this job: it asks for {what}. It stays queued; {fix}."


def _span(seconds: int) -> str:
    """``3600`` -> ``1h``, ``3540`` -> ``59m``, ``5430`` -> ``1h30m30s``: as users type walltimes."""
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n) or "0s"
