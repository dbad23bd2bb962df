"""The table people read and the JSON scripts read: one column per rule set, targets marked."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from glidein_client.wire.units import format_duration

#: The targets a scenario under pressure should meet (efficiency and waste as fractions).
TARGETS = {"efficiency": 0.995, "draining_waste": 0.01, "multi_over_single_wait": 2.0}

Result = Mapping[str, Any]


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def _dur(v: Any) -> str:
    return "never" if v is None else format_duration(v)


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:,.0f}" if isinstance(v, int) or abs(v) >= 100 else f"{v:.2f}"


ROWS: tuple[tuple[str, str, Any], ...] = (
    ("pilot internal efficiency", "efficiency", _pct),
    ("draining waste at pilot end", "draining_waste", _pct),
    ("single-core wait, median", "wait_single_median_s", _dur),
    ("single-core wait, 90th pct", "wait_single_p90_s", _dur),
    ("multicore wait, median", "wait_multi_median_s", _dur),
    ("multicore wait, 90th pct", "wait_multi_p90_s", _dur),
    ("multicore / single-core median wait", "multi_over_single_wait", _num),
    ("GPU job wait, median", "wait_gpu_median_s", _dur),
    ("time to allocate ramp cores", "ramp_allocated_s", _dur),
    ("time to use ramp cores", "ramp_busy_s", _dur),
    ("core-hours allocated", "allocated_core_h", _num),
    ("core-hours lost (no result)", "lost_core_h", _num),
    ("jobs done", "jobs_done", _num),
    ("jobs failed after retries", "jobs_failed", _num),
    ("attempts lost to node failures", "lost_to_node_failures", _num),
    ("attempts lost to black holes", "lost_to_black_holes", _num),
    ("attempts failed by the job", "job_failures", _num),
    ("retries", "retries", _num),
    ("pilots (black holes, failed)", "pilots", _num),
    ("pilots that left retiring, holding no job", "pilots_retired", _num),
    ("reservations made", "reservations", _num),
)


def _meets(key: str, v: Any) -> str:
    if key not in TARGETS or v is None:
        return ""
    ok = v >= TARGETS[key] if key == "efficiency" else v <= TARGETS[key]
    return " ok" if ok else " MISS"


def table(columns: Sequence[tuple[str, Result]], title: str) -> str:
    """One row per measure, one column per run; a target row says ok or MISS."""
    heads = [label for label, _ in columns]
    lines: list[list[str]] = []
    for name, key, fmt in ROWS:
        cells = []
        for _, res in columns:
            cell = fmt(res.get(key))
            if key == "pilots":
                cell += f" ({res.get('pilots_black_hole', 0)}, {res.get('pilots_failed', 0)})"
            cells.append(cell + _meets(key, res.get(key)))
        if key in TARGETS:
            name += f" (target {'≥' if key == 'efficiency' else '≤'} {_target(key)})"
        if key.startswith("ramp") and columns:
            name = name.replace("ramp cores", f"{columns[0][1].get('ramp_cores', 0):,} cores")
        lines.append([name, *cells])
    width = [max(len(r[i]) for r in [["", *heads], *lines]) for i in range(len(heads) + 1)]
    out = [
        title,
        "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(["", *heads], width, strict=True))),
    ]
    out += [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, width, strict=True))) for r in lines
    ]
    return "\n".join(out)


def _target(key: str) -> str:
    v = TARGETS[key]
    return f"{100 * v:g} %" if key != "multi_over_single_wait" else f"{v:g}x"


def sweep_table(key: str, rows: Sequence[tuple[str, str, Result]]) -> str:
    """One row per swept value (and rule set)."""
    head = (
        f"{key:>12}  {'rules':<10}  {'efficiency':>10}  {'draining':>9}  "
        f"{'1-core wait':>11}  {'multi wait':>10}  {'ratio':>6}"
    )
    out = [head]
    for value, label, r in rows:
        out.append(
            f"{value:>12}  {label:<10}  {_pct(r.get('efficiency')):>10}  {_pct(r.get('draining_waste')):>9}  "
            f"{_dur(r.get('wait_single_median_s')):>11}  {_dur(r.get('wait_multi_median_s')):>10}  "
            f"{_num(r.get('multi_over_single_wait')):>6}"
        )
    return "\n".join(out)


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
