"""Load SQL kept in named blocks (``-- name: NAME``) from the package's .sql files.

Blocks named ``migration_N`` upgrade a database's schema from version N-1 to N; a store records the
version it reached (table ``meta``, key ``schema_version``) and runs the newer ones at open.
"""

from __future__ import annotations

import re
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
            if name in blocks:  # a second block of one name would silently replace the first
                raise ValueError(f"{filename}: two SQL blocks are named {name!r}")
        elif name is not None:
            lines.append(line)
    if name:
        blocks[name] = "\n".join(lines).strip()
    return blocks


def migrations(blocks: dict[str, str]) -> list[tuple[int, str]]:
    """The numbered schema migrations among ``blocks``, oldest first."""
    found = [(int(m.group(1)), sql) for name, sql in blocks.items() if (m := re.fullmatch(r"migration_(\d+)", name))]
    return sorted(found)
