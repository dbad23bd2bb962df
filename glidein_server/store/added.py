"""What a submit adds to the running aggregates, worked out from its specs before they are stored.

A store counts a submitted batch into its kept aggregates (idle jobs by shape, jobs by owner, state
and multicore, jobs by label, owner and state) with one row per group, instead of one per job or a
statement that reads the batch's rows back and parses their specs again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from glidein_client.wire.schema import JobSpec

#: An idle job's shape as the stores keep it: cpus, memory_mb, gpus, disk_mb, walltime_s, sites key.
Shape = tuple[int, int, int, int, int, str]


def sites_key(sites: Sequence[str] | None) -> str:
    """How a job's allowed sites are stored: '' for any site, else ',a,b,' (searched with instr)."""
    return "" if not sites else "," + ",".join(sorted(set(sites))) + ","


class Added(NamedTuple):
    """One submitted batch's groups (all its jobs are idle): counts by shape, by multicore, by label."""

    shapes: Counter[Shape]
    multicore: Counter[bool]
    labels: Counter[tuple[str, str]]


def added(specs: Sequence[JobSpec]) -> Added:
    shapes: Counter[Shape] = Counter()
    labels: Counter[tuple[str, str]] = Counter()
    for s in specs:
        shapes[(s.cpus, s.memory_mb, s.gpus, s.disk_mb, s.walltime_s, sites_key(s.sites))] += 1
        if s.labels:
            labels.update(s.labels.items())
    multicore: Counter[bool] = Counter()
    for (cpus, *_), n in shapes.items():
        multicore[cpus > 1] += n
    return Added(shapes, multicore, labels)
