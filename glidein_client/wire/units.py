"""Human-friendly sizes and durations: ``2G`` -> 2048 MB, ``10m`` -> 600 s."""

from __future__ import annotations

import re

from glidein_client.wire.errors import ValidationError

_MEM = {"": 1, "m": 1, "mb": 1, "mib": 1, "g": 1024, "gb": 1024, "gib": 1024, "t": 1024**2, "tb": 1024**2}
_TIME = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_NUM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory_mb(text: str | int, *, field: str = "memory") -> int:
    """Parse ``2G``, ``512M``, ``512`` (MB) into whole megabytes."""
    if isinstance(text, int):
        return text
    m = _NUM.match(text)
    if not m or m.group(2).lower() not in _MEM:
        raise ValidationError(
            f"{field}: cannot read {text!r} as a size.",
            hint="Write a number of megabytes or use a unit, e.g. 512M, 2G, 1T.",
            field=field,
        )
    return int(float(m.group(1)) * _MEM[m.group(2).lower()])


def parse_duration_s(text: str | int, *, field: str = "walltime") -> int:
    """Parse ``90``, ``10m``, ``2h``, ``1d`` or ``HH:MM:SS`` into seconds."""
    if isinstance(text, int):
        return text
    if ":" in text:
        parts = text.strip().split(":")
        if 2 <= len(parts) <= 3 and all(p.isdigit() for p in parts):
            total = 0
            for p in parts:
                total = total * 60 + int(p)
            return total
    m = _NUM.match(text)
    if not m or m.group(2).lower() not in _TIME:
        raise ValidationError(
            f"{field}: cannot read {text!r} as a duration.",
            hint="Write seconds or use a unit, e.g. 90, 10m, 2h, 1d, or HH:MM:SS.",
            field=field,
        )
    return int(float(m.group(1)) * _TIME[m.group(2).lower()])


def format_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
