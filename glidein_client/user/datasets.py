"""``glidein status --by dataset``: progress per value of a label (states, held jobs, cores, CPU efficiency)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from glidein_client.user import render
from glidein_client.wire.schema import JobState, JobView


@dataclass
class Progress:
    states: dict[str, int] = field(default_factory=dict)
    cores_in_use: int = 0
    cpu_s: float = 0.0
    core_wall_s: float = 0.0

    @property
    def efficiency(self) -> float | None:
        return self.cpu_s / self.core_wall_s if self.core_wall_s else None


def by_label(jobs: Iterable[JobView], key: str) -> dict[str, Progress]:
    """Jobs grouped by their ``key`` label ('' for jobs without it), with the usage of done jobs."""
    out: dict[str, Progress] = {}
    for job in jobs:
        p = out.setdefault(job.spec.labels.get(key, ""), Progress())
        p.states[job.state.value] = p.states.get(job.state.value, 0) + 1
        if job.state is JobState.RUNNING:
            p.cores_in_use += job.spec.cpus
        u = job.usage
        if job.state is JobState.DONE and u is not None and u.cpu_s is not None and u.wall_s:
            p.cpu_s += u.cpu_s
            p.core_wall_s += u.wall_s * u.cpus
    return dict(sorted(out.items()))


def table(groups: dict[str, Progress], key: str) -> str:
    rows = []
    for name, p in groups.items():
        s = p.states
        eff = "-" if p.efficiency is None else f"{100 * p.efficiency:.0f}%"
        rows.append(
            [name or f"(no {key})", str(s.get("idle", 0) + s.get("claimed", 0)), str(s.get("running", 0)),
             str(s.get("done", 0)), str(s.get("failed", 0)), str(s.get("cancelled", 0)), str(s.get("held", 0)),
             str(p.cores_in_use), eff]
        )  # fmt: skip
    headers = [key, "idle", "running", "done", "failed", "cancelled", "held", "cores", "CPU eff"]
    return render.table(headers, rows, right=range(1, 9))


def as_json(groups: dict[str, Progress]) -> dict[str, object]:
    return {
        name: {"states": p.states, "cores_in_use": p.cores_in_use, "cpu_efficiency": p.efficiency}
        for name, p in groups.items()
    }
