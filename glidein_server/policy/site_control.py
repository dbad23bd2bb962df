"""The operator's hand on a site: drain, pause, cap. Pure functions over plain numbers.

- **open**: the site gets pilots and its pilots claim work, as the demand says.
- **draining**: no new pilots; its pilots claim nothing more; running jobs finish; then its
  pilots leave (each as soon as it holds no job).
- **paused**: no new pilots and no new claims until resumed; pilots stay until idle.
- **cap** (any mode): the site's jobs hold at most ``max_cpus`` cores at once; pilots are
  demanded only up to that many cores.
"""

from __future__ import annotations

from glidein_client.wire.schema import SiteMode


def demanded_pilots(pilots: int, mode: SiteMode, max_cpus: int | None, pilot_cpus: int, pilots_alive: int) -> int:
    """The pilots to demand of a site: none unless it is open, and no more than its cap allows
    beside the ``pilots_alive`` (pending or running) it has, each of ``pilot_cpus`` cores."""
    if mode is not SiteMode.OPEN:
        return 0
    if max_cpus is None:
        return pilots
    room = max_cpus // max(pilot_cpus, 1) - pilots_alive
    return max(0, min(pilots, room))


def claim_room(mode: SiteMode, max_cpus: int | None, cpus_in_use: int) -> int | None:
    """How many more cores the site's pilots may claim now: 0 unless open; None for no limit."""
    if mode is not SiteMode.OPEN:
        return 0
    if max_cpus is None:
        return None
    return max(0, max_cpus - cpus_in_use)


def within_room(chosen: list[tuple[int, int]], room: int | None) -> list[int]:
    """The ids of ``chosen`` (id, cpus), in order, that fit in ``room`` cores together."""
    if room is None:
        return [job_id for job_id, _ in chosen]
    out = []
    for job_id, cpus in chosen:
        if cpus <= room:
            out.append(job_id)
            room -= cpus
    return out


def describe(mode: SiteMode, max_cpus: int | None) -> str:
    """One line for people: what the operator set for the site."""
    text = {
        SiteMode.OPEN: "open",
        SiteMode.DRAINING: "draining: no new pilots or claims; running jobs finish, then its pilots leave",
        SiteMode.PAUSED: "paused: no new pilots or claims until `glidein-server site resume`",
    }[mode]
    return f"{text}; capped at {max_cpus} cores" if max_cpus is not None else text
