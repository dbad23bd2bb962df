"""Plain-text output for people: tables, id ranges, sizes, counts and a one-line progress bar.

Pure functions over plain data; the CLI decides where the text goes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TextIO

from glidein_client.wire.schema import JobState, JobView
from glidein_client.wire.units import format_duration

#: Seconds between progress lines when the output is not a terminal.
PLAIN_PROGRESS_S = 5.0
#: The order states are listed in, most interesting to a waiting person first.
STATE_ORDER = ("done", "failed", "cancelled", "held", "running", "claimed", "idle")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()) -> str:
    """Align ``rows`` under ``headers``; columns listed in ``right`` are right-aligned.

    The last column is never padded, so long notes do not leave trailing spaces.
    """
    body = [list(map(str, r)) for r in rows]
    widths = [len(h) for h in headers]
    for r in body:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))
    right_cols = set(right)
    last = len(headers) - 1

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            if i == last:
                out.append(cell)
            elif i in right_cols:
                out.append(cell.rjust(widths[i]))
            else:
                out.append(cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in body)])


def compress_ids(ids: Iterable[int]) -> str:
    """``[1, 2, 3, 5, 7, 8]`` -> ``"1-3,5,7-8"``: one word that ``glidein status`` reads back."""
    parts: list[str] = []
    ordered = sorted(set(ids))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_size(n: int | float) -> str:
    """Bytes as ``512 B``, ``1.5 KiB``, ``3.2 MiB``, ..."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_memory_mb(mb: int) -> str:
    if mb >= 1024 and mb % 1024 == 0:
        return f"{mb // 1024}G"
    if mb >= 1024:
        return f"{mb / 1024:.1f}G"
    return f"{mb}M"


def asked(job: JobView, field: str) -> str:
    """`` (asked 100M)`` when a retry grew the job's ``memory_mb`` or ``walltime_s``, else ``""``."""
    value = job.asked.get(field)
    if value is None:
        return ""
    return f" (asked {format_memory_mb(value) if field == 'memory_mb' else format_duration(value)})"


def format_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def count_states(jobs: Iterable[JobView]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.state.value] = counts.get(job.state.value, 0) + 1
    return counts


def format_counts(counts: Mapping[str, int]) -> str:
    """``{"done": 3, "idle": 1}`` -> ``"3 done, 1 idle"`` in a fixed, readable order."""
    known = [s for s in STATE_ORDER if counts.get(s)]
    other = sorted(s for s in counts if s not in STATE_ORDER and counts[s])
    return ", ".join(f"{counts[s]} {s}" for s in [*known, *other]) or "no jobs"


def progress_line(counts: Mapping[str, int], total: int, *, width: int = 30) -> str:
    """``[#########-----] 60/100 done 2 failed 38 running``; every final job fills the bar."""
    final = sum(counts.get(s.value, 0) for s in JobState if s.final)
    filled = min(width, round(width * final / total)) if total else width
    parts = [f"[{'#' * filled}{'-' * (width - filled)}] {counts.get('done', 0)}/{total} done"]
    for state in ("failed", "cancelled", "held", "running", "claimed", "idle"):
        if counts.get(state):
            parts.append(f"{counts[state]} {state}")
    return " ".join(parts)


def age_or_runtime(job: JobView, now: float) -> str:
    """How long a job has waited or run so far, or how long it took once final."""
    if job.state.final and job.finished_at is not None:
        return format_duration(max(0.0, job.finished_at - job.submitted_at))
    return format_duration(max(0.0, now - job.submitted_at))


def job_note(job: JobView) -> str:
    """The one thing a person should know about a job: why it failed, or why it is not running."""
    text = job.reason if job.state in (JobState.FAILED, JobState.CANCELLED) and job.reason else None
    text = text or job.note or job.reason or ""
    return " ".join(text.split())


def jobs_table(jobs: Sequence[JobView], *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = []
    for job in jobs:
        rows.append(
            [
                str(job.id),
                job.state.value,
                str(job.spec.cpus) + (f"+{job.spec.gpus}g" if job.spec.gpus else ""),
                format_memory_mb(job.spec.memory_mb) + asked(job, "memory_mb"),
                job.site or "-",
                age_or_runtime(job, now),
                "-" if job.exit_code is None else str(job.exit_code),
                job_note(job),
            ]
        )
    headers = ["ID", "STATE", "CPUS", "MEM", "SITE", "AGE/TOOK", "EXIT", "NOTE"]
    return table(headers, rows, right=(0, 2, 3, 5, 6))


class Progress:
    """One line on stderr redrawn in place on a terminal, else a line every few seconds."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last_line = ""
        self.last_at = 0.0

    def show(self, line: str) -> None:
        now = time.monotonic()
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
            self.stream.flush()
        elif (line != self.last_line and now - self.last_at >= PLAIN_PROGRESS_S) or now - self.last_at >= 60:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last_at = now
        self.last_line = line

    def message(self, text: str) -> None:
        """A line of its own above the progress line."""
        self.stream.write(f"\r\x1b[K{text}\n" if self.tty else f"{text}\n")
        if self.tty and self.last_line:
            self.stream.write(self.last_line)
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.last_line:
            self.stream.write("\n")
            self.stream.flush()
