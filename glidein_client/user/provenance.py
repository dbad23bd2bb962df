"""Text of an attempt's usage and provenance: what it used, where and how it ran, what went in and out.

Used by ``glidein logs`` and ``glidein show``; the same facts are in their ``--json`` output and in
``glidein status --json`` (a job's ``usage``).
"""

from __future__ import annotations

from collections.abc import Sequence

from glidein_client.user import render
from glidein_client.wire.schema import FileDigest, OutputFile, Provenance
from glidein_client.wire.units import format_duration


def usage_line(
    cpus: int | None, wall_s: float | None, cpu_s: float | None, efficiency: float | None, max_rss_mb: float | None
) -> str:
    """``usage:     4 cores, wall 12s, CPU 44s, efficiency 91%, max RSS 512 MB``; '' before it ran."""
    if wall_s is None and cpu_s is None:
        return ""
    parts = [render.plural(cpus, "core")] if cpus else []
    if wall_s is not None:
        parts.append(f"wall {format_duration(wall_s)}")
    if cpu_s is not None:
        parts.append(f"CPU {format_duration(cpu_s)}")
    if efficiency is not None:
        parts.append(f"CPU efficiency {100 * efficiency:.0f}%")
    if max_rss_mb:
        parts.append(f"max RSS {max_rss_mb:.0f} MB")
    return "usage:     " + ", ".join(parts)


def provenance_lines(p: Provenance | None, outputs: Sequence[OutputFile] = ()) -> list[str]:
    """Where and how the attempt ran, then the sha256 of its inputs and outputs."""
    if p is None:
        return [f"output:    {o.name}  sha256 {o.sha256}  ({render.format_size(o.size)})" for o in outputs]
    batch = f"{p.batch_system} job {p.batch_id}" if p.batch_id else p.batch_system or "no batch system"
    pinned = f"cores {render.compress_ids(p.cores)}" if p.cores else "no core pinning"
    lines = [
        f"host:      {p.host or '-'} ({batch})",
        f"pinned to: {pinned}; GPUs {','.join(p.gpus) or 'none'}; isolation {p.isolation or '-'}",
        f"cpu time:  user {p.cpu_user_s:.2f} s + system {p.cpu_system_s:.2f} s",
        f"software:  glidein {p.pilot_version or '?'}, {p.python or '?'}, {p.os or '?'}",
        f"cpu model: {p.cpu_model or '-'}",
    ]
    if p.started_at is not None:
        lines.append(f"ran:       {render.format_time(p.started_at)} to {render.format_time(p.ended_at)}")
    lines += [_digest("input:    ", d) for d in p.inputs]
    lines += [f"output:    {o.name}  sha256 {o.sha256}  ({render.format_size(o.size)})" for o in outputs]
    return lines


def _digest(prefix: str, d: FileDigest) -> str:
    size = f"  ({render.format_size(d.size)})" if d.size is not None else ""
    return f"{prefix} {d.name}  sha256 {d.sha256}{size}"
