"""Load SQL kept in named blocks (``-- name: NAME``) from the package's .sql files."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load(filename: str) -> dict[str, str]:
    text = resources.files(__package__).joinpath("sql", filename).read_text()
    blocks: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("-- name:"):
            if name:
                blocks[name] = "\n".join(lines).strip()
            name, lines = line.split(":", 1)[1].strip(), []
        elif name is not None:
            lines.append(line)
    if name:
        blocks[name] = "\n".join(lines).strip()
    return blocks
