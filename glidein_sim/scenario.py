"""Scenario files: sites, pilots and a workload, as TOML (see ``examples/sim/``).

Durations are written like everywhere else in glidein (``90``, ``10m``, ``40h``, ``7d``); random
quantities are tables ``{dist = "uniform", low = "1h", high = "2h"}``, ``{dist = "exponential",
mean = "20m"}``, ``{dist = "lognormal", median = "20m", sigma = 1.0}`` or a plain value. A bad
file fails before anything runs, naming the key and what is expected.
"""

from __future__ import annotations

import copy
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from glidein_client.wire.errors import ConfigError, GlideinError
from glidein_client.wire.units import parse_duration_s

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Dist:
    """A random duration in seconds."""

    kind: str  # fixed, uniform, exponential, lognormal
    a: float
    b: float = 0.0

    def draw(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "exponential":
            return rng.expovariate(1.0 / self.a) if self.a > 0 else 0.0
        if self.kind == "lognormal":
            return rng.lognormvariate(math.log(self.a), self.b)
        return self.a

    def sampler(self, rng: random.Random) -> Callable[[], float]:
        """``draw(rng)`` as a call without arguments: the same numbers from the same generator."""
        if self.kind == "uniform":
            return partial(rng.uniform, self.a, self.b)
        if self.kind == "exponential" and self.a > 0:
            return partial(rng.expovariate, 1.0 / self.a)
        if self.kind == "lognormal":
            return partial(rng.lognormvariate, math.log(self.a), self.b)
        value = 0.0 if self.kind == "exponential" else self.a
        return partial(float, value)


@dataclass(frozen=True)
class PilotSpec:
    cpus: int
    memory_mb: int
    gpus: int
    disk_mb: int
    walltime_s: int
    idle_timeout_s: float
    end_margin_s: float
    black_hole_failures: int
    fast_failure_s: float


@dataclass(frozen=True)
class SiteSpec:
    name: str
    nodes: int
    pilot: PilotSpec
    pilots_per_node: int
    queue_wait: Dist
    cycle_s: float
    max_pilots: int
    max_idle_pilots: int
    max_submit_per_cycle: int
    max_queued_s: float
    node_mtbf_s: float  # 0: nodes never fail
    black_hole_fraction: float

    @property
    def slots(self) -> int:
        """Pilots the site runs at once."""
        return self.nodes * self.pilots_per_node

    @property
    def cores(self) -> int:
        return self.slots * self.pilot.cpus


@dataclass(frozen=True)
class WorkSpec:
    name: str
    cpus: int
    memory_mb: int
    gpus: int
    disk_mb: int
    priority: int
    runtime: Dist
    walltime_s: int  # 0: runtime x walltime_margin, rounded up to walltime_round_s
    walltime_margin: float
    walltime_round_s: int
    count: int  # submitted at the start
    rate_per_h: float  # then this many per hour (Poisson)
    keep_idle: int  # or: the queue always holds this many idle jobs of this kind
    max_retries: int
    sites: frozenset[str] | None
    fail_fraction: float  # jobs that fail by themselves (their own fault) after a random part of their run

    def walltime_for(self, runtime_s: float) -> int:
        if self.walltime_s:
            return self.walltime_s
        step = max(1, self.walltime_round_s)
        return int(math.ceil(runtime_s * self.walltime_margin / step) * step)


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_s: float
    seed: int
    sample_s: float
    ramp_cores: int  # report the time to reach this many cores (0: 90 % of all sites)
    reservation_after_s: float
    reservation_max_hold_s: float
    eol_window_s: float
    eol_order: str
    sites: tuple[SiteSpec, ...]
    work: tuple[WorkSpec, ...]

    @property
    def cores(self) -> int:
        return sum(s.cores for s in self.sites)


class _Reader:
    """Typed reads from one table, with the key's full name in every error."""

    def __init__(self, path: str, where: str, table: dict[str, Any]) -> None:
        self.path, self.where, self.table = path, where, table

    def _fail(self, key: str, expected: str) -> ConfigError:
        value = self.table.get(key)
        return ConfigError(
            f"{self.path}: {self.where}{key} = {value!r} is not valid.", hint=f"Expected {expected}.", field=key
        )

    def duration(self, key: str, default: str | int) -> float:
        value = self.table.get(key, default)
        try:
            return float(parse_duration_s(value if isinstance(value, str | int) else str(value), field=key))
        except GlideinError:
            raise self._fail(key, "a duration such as 90, 10m, 40h or 7d") from None

    def integer(self, key: str, default: int, low: int = 0) -> int:
        value = self.table.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise self._fail(key, f"a whole number of at least {low}")
        return value

    def number(self, key: str, default: float, low: float = 0.0, high: float = math.inf) -> float:
        value = self.table.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
            raise self._fail(key, f"a number from {low:g} to {high:g}")
        return float(value)

    def choice(self, key: str, default: str, options: tuple[str, ...]) -> str:
        value = self.table.get(key, default)
        if value not in options:
            raise self._fail(key, " or ".join(f'"{o}"' for o in options))
        return str(value)

    def dist(self, key: str, default: str) -> Dist:
        value = self.table.get(key, default)
        if not isinstance(value, dict):
            return Dist("fixed", self.duration(key, default))
        sub = _Reader(self.path, f"{self.where}{key}.", value)
        kind = value.get("dist", "fixed")
        if kind == "uniform":
            low, high = sub.duration("low", 0), sub.duration("high", 0)
            if high < low:
                raise self._fail(key, "high at least low")
            return Dist(kind, low, high)
        if kind == "exponential":
            return Dist(kind, sub.duration("mean", 0))
        if kind == "lognormal":
            return Dist(kind, max(1.0, sub.duration("median", 60)), sub.number("sigma", 1.0, 0.0, 10.0))
        if kind == "fixed":
            return Dist(kind, sub.duration("value", 0))
        raise self._fail(key, 'dist = "fixed", "uniform", "exponential" or "lognormal"')

    def known(self, keys: set[str]) -> None:
        extra = sorted(set(self.table) - keys)
        if extra:
            raise ConfigError(
                f"{self.path}: unknown key {self.where}{extra[0]}.",
                hint=f"Known keys here: {', '.join(sorted(keys))}.",
                field=extra[0],
            )


_PILOT_KEYS = {"cpus", "memory_mb", "gpus", "disk_mb", "walltime", "idle_timeout", "end_margin"}
_PILOT_KEYS |= {"black_hole_failures", "fast_failure"}
_SITE_KEYS = {"name", "nodes", "cores_per_node", "gpus_per_node", "pilot", "queue_wait", "cycle", "max_pilots"}
_SITE_KEYS |= {"max_idle_pilots", "max_submit_per_cycle", "max_queued", "node_mtbf", "black_hole_fraction"}
_WORK_KEYS = {"name", "cpus", "memory_mb", "gpus", "disk_mb", "priority", "runtime", "walltime", "walltime_margin"}
_WORK_KEYS |= {"walltime_round", "count", "rate_per_h", "keep_idle", "max_retries", "sites", "fail_fraction"}
_SIM_KEYS = {"name", "duration", "seed", "sample", "ramp_cores"}
_SERVER_KEYS = {"reservation_after", "reservation_max_hold", "eol_window", "eol_order"}


def _pilot(r: _Reader) -> PilotSpec:
    r.known(_PILOT_KEYS)
    return PilotSpec(
        cpus=r.integer("cpus", 8, 1),
        memory_mb=r.integer("memory_mb", 16000, 1),
        gpus=r.integer("gpus", 0),
        disk_mb=r.integer("disk_mb", 0),
        walltime_s=int(r.duration("walltime", "40h")),
        idle_timeout_s=r.duration("idle_timeout", "2m"),
        end_margin_s=r.duration("end_margin", "5s"),
        black_hole_failures=r.integer("black_hole_failures", 5, 1),
        fast_failure_s=r.duration("fast_failure", "10s"),
    )


def _site(path: str, i: int, table: dict[str, Any], pilot_defaults: dict[str, Any]) -> SiteSpec:
    r = _Reader(path, f"site[{i}].", table)
    r.known(_SITE_KEYS)
    name = table.get("name", f"site{i}")
    if not isinstance(name, str) or not name:
        raise r._fail("name", "a site name")
    own = table.get("pilot", {})
    if not isinstance(own, dict):
        raise r._fail("pilot", "a table of pilot keys")
    pilot = _pilot(_Reader(path, f"site[{i}].pilot.", {**pilot_defaults, **own}))
    per_node = r.integer("cores_per_node", pilot.cpus, 1) // pilot.cpus
    gpus_per_node = r.integer("gpus_per_node", pilot.gpus)
    if pilot.gpus:
        per_node = min(per_node, gpus_per_node // pilot.gpus)
    if per_node < 1:
        raise r._fail("cores_per_node", f"room on a node for one pilot of {pilot.cpus} cpus and {pilot.gpus} GPUs")
    return SiteSpec(
        name=name,
        nodes=r.integer("nodes", 1, 1),
        pilot=pilot,
        pilots_per_node=per_node,
        queue_wait=r.dist("queue_wait", "0"),
        cycle_s=max(1.0, r.duration("cycle", "2m")),
        max_pilots=r.integer("max_pilots", 100),
        max_idle_pilots=r.integer("max_idle_pilots", 10),
        max_submit_per_cycle=r.integer("max_submit_per_cycle", 10),
        max_queued_s=r.duration("max_queued", "1d"),
        node_mtbf_s=r.duration("node_mtbf", 0),
        black_hole_fraction=r.number("black_hole_fraction", 0.0, 0.0, 1.0),
    )


def _work(path: str, i: int, table: dict[str, Any]) -> WorkSpec:
    r = _Reader(path, f"workload[{i}].", table)
    r.known(_WORK_KEYS)
    sites = table.get("sites")
    if sites is not None and not (isinstance(sites, list) and all(isinstance(s, str) for s in sites)):
        raise r._fail("sites", "a list of site names")
    return WorkSpec(
        name=str(table.get("name", f"work{i}")),
        cpus=r.integer("cpus", 1, 1),
        memory_mb=r.integer("memory_mb", 2000),
        gpus=r.integer("gpus", 0),
        disk_mb=r.integer("disk_mb", 0),
        priority=r.integer("priority", 0, -1000000),
        runtime=r.dist("runtime", "1h"),
        walltime_s=int(r.duration("walltime", 0)),
        walltime_margin=r.number("walltime_margin", 1.0, 1.0, 100.0),
        walltime_round_s=int(r.duration("walltime_round", "10m")),
        count=r.integer("count", 0),
        rate_per_h=r.number("rate_per_h", 0.0),
        keep_idle=r.integer("keep_idle", 0),
        max_retries=r.integer("max_retries", 0),
        sites=frozenset(sites) if sites is not None else None,
        fail_fraction=r.number("fail_fraction", 0.0, 0.0, 1.0),
    )


def parse(path: str, doc: dict[str, Any]) -> Scenario:
    """A scenario from a parsed TOML document; ``path`` names it in errors."""
    top = _Reader(path, "", doc)
    top.known({"sim", "server", "pilot", "site", "workload"})
    sim_t, server_t, pilot_t = (doc.get(k, {}) for k in ("sim", "server", "pilot"))
    for key, table in (("sim", sim_t), ("server", server_t), ("pilot", pilot_t)):
        if not isinstance(table, dict):
            raise top._fail(key, "a table")
    sim, server = _Reader(path, "sim.", sim_t), _Reader(path, "server.", server_t)
    sim.known(_SIM_KEYS)
    server.known(_SERVER_KEYS)
    _Reader(path, "pilot.", pilot_t).known(_PILOT_KEYS)
    site_list, work_list = doc.get("site", []), doc.get("workload", [])
    if not isinstance(site_list, list) or not site_list or not all(isinstance(t, dict) for t in site_list):
        raise ConfigError(f"{path}: no [[site]] table.", hint="Describe at least one site with [[site]].")
    if not isinstance(work_list, list) or not work_list or not all(isinstance(t, dict) for t in work_list):
        raise ConfigError(
            f"{path}: no [[workload]] table.", hint="Describe at least one kind of job with [[workload]]."
        )
    sites = tuple(_site(path, i, t, pilot_t) for i, t in enumerate(site_list))
    if len({s.name for s in sites}) != len(sites):
        raise ConfigError(f"{path}: two sites share a name.", hint="Give every [[site]] its own name.")
    return Scenario(
        name=str(sim_t.get("name", Path(path).stem)),
        duration_s=max(1.0, sim.duration("duration", "7d")),
        seed=sim.integer("seed", 1),
        sample_s=max(1.0, sim.duration("sample", "10m")),
        ramp_cores=sim.integer("ramp_cores", 0),
        reservation_after_s=server.duration("reservation_after", "30m"),
        reservation_max_hold_s=server.duration("reservation_max_hold", "1h"),
        eol_window_s=server.duration("eol_window", "6h"),
        eol_order=server.choice("eol_order", "longest", ("longest", "shortest")),
        sites=sites,
        work=tuple(_work(path, i, t) for i, t in enumerate(work_list)),
    )


def load_document(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"No scenario file at {path}.", hint="Give the path of a TOML file, e.g. examples/sim/cms-multicore.toml."
        ) from None
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}.", hint="Check the path and its permissions.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.", hint="Fix the line it names.") from None


def override(doc: dict[str, Any], key: str, value: str) -> dict[str, Any]:
    """A copy of ``doc`` with one dotted key set, e.g. ``pilot.walltime`` or ``site.0.nodes``.

    ``pilot.*`` also replaces any site's own value of that key, so a sweep means what it says.
    Values are read as TOML where they can be (numbers, booleans), else kept as text ("12h").
    """
    out = copy.deepcopy(doc)
    parts = key.split(".")
    try:
        parsed: Any = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    node: Any = out
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"Cannot set {key}: {'.'.join(parts[: i + 1])} is not an index of that list.")
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise ConfigError(f"Cannot set {key}: {'.'.join(parts[:i])} is not a table.")
    if not isinstance(node, dict):
        raise ConfigError(f"Cannot set {key}: {'.'.join(parts[:-1])} is not a table.")
    node[parts[-1]] = parsed
    if parts[0] == "pilot" and len(parts) == 2:
        for site in out.get("site", []):
            if isinstance(site, dict) and isinstance(site.get("pilot"), dict):
                site["pilot"].pop(parts[1], None)
    return out
