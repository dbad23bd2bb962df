"""The rooms of the code base: who may import whom, and no import circles.

Each package serves one audience (README, "How it works"). These rules keep it so: the pilot
never imports the site client or the server, the server never imports the site client, the
user CLI or the pilot, and the wire imports nothing of ours.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOPS = ("glidein_client", "glidein_server", "glidein_demo", "glidein_sim")

#: room -> rooms it may import (a room always may import itself).
ALLOWED: dict[str, set[str]] = {
    "glidein_client.wire": set(),
    "glidein_client.user": {"glidein_client.wire"},
    "glidein_client.sharedfs": {"glidein_client.wire"},
    "glidein_client.site": {"glidein_client.wire", "glidein_client.sharedfs"},
    "glidein_client.pilot": {"glidein_client.wire", "glidein_client.sharedfs"},
    "glidein_server": {"glidein_client.wire"},
    "glidein_demo": {"glidein_client", "glidein_server"},
    # The simulator runs the pure decisions only: never a store, a scheduler, the pilot's I/O.
    "glidein_sim": {
        "glidein_server.policy",
        "glidein_client.site.decisions",
        "glidein_client.pilot.partition",
        "glidein_client.wire",
    },
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for top in TOPS for p in (REPO / top).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ours that ``name`` imports, at any depth in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known)
    return {m for m in found if m.split(".")[0] in TOPS and m in known and m != name}


def _room(module: str) -> str:
    rooms = sorted(ALLOWED, key=len, reverse=True)
    return next(r for r in rooms if module == r or module.startswith(r + "."))


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def test_every_module_lives_in_a_room(graph: dict[str, set[str]]) -> None:
    loose = [m for m in graph if m not in TOPS and m.count(".") == 1 and m.startswith("glidein_client.")]
    loose = [m for m in loose if m not in ALLOWED]
    assert loose == [], f"modules directly under glidein_client/ belong in a room: {loose}"


def _forbidden(graph: dict[str, set[str]]) -> list[str]:
    """Imports a room may not make. A room may name a whole room or single modules of one."""
    bad = []
    for module, targets in graph.items():
        if module in TOPS:
            continue
        room = _room(module)
        allowed = ALLOWED[room] | {room}
        for target in targets:
            if target in TOPS:
                continue
            other = _room(target)
            if not any(x == a or x.startswith(a + ".") for x in (other, target) for a in allowed):
                bad.append(f"{module} imports {target} ({room} may not import {other})")
    return sorted(bad)


def test_rooms_import_only_what_they_may(graph: dict[str, set[str]]) -> None:
    bad = _forbidden(graph)
    assert bad == [], "\n".join(bad)


def test_the_simulator_imports_exactly_the_pure_policy(graph: dict[str, set[str]]) -> None:
    used = {t for m, ts in graph.items() if m.startswith("glidein_sim") for t in ts if not t.startswith("glidein_sim")}
    pure = ("glidein_server.policy.", "glidein_client.wire.")
    exact = {"glidein_client.site.decisions", "glidein_client.pilot.partition"}
    assert all(t in exact or t == "glidein_server.policy" or t.startswith(pure) for t in used), sorted(used)
    assert exact <= used  # the client's decisions and the pilot's partitioning run in the simulator
    assert {"glidein_server.policy.matchmaking", "glidein_server.policy.demand"} <= used
    fake = {"glidein_sim.x": {"glidein_server.store.base", "glidein_client.pilot.pilot", "glidein_client.site.client"}}
    assert len(_forbidden(fake)) == 3


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    assert _cycles(graph) == []


def test_the_checks_catch_a_circle_and_a_forbidden_import() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _room("glidein_client.pilot.channels.base") == "glidein_client.pilot"
    assert "glidein_client.site" not in ALLOWED["glidein_client.pilot"]


MAX_MODULE_LINES = 500


def test_no_module_is_longer_than_the_limit() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in _modules().values()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"split these modules by concept (at most {MAX_MODULE_LINES} lines each): {long}"
