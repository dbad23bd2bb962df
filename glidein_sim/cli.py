"""``glidein-sim``: run a scenario with the scheduling code as it was and as improved, side by side.

glidein-sim examples/sim/cms-multicore.toml
glidein-sim examples/sim/cms-multicore.toml --sweep pilot.walltime=12h,24h,40h
glidein-sim examples/sim/week-10k.toml --rules improved --no-plots
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from glidein_client.wire.errors import GlideinError, ValidationError
from glidein_sim.engine import Simulation, simulate
from glidein_sim.metrics import summary
from glidein_sim.model import Rules, backfill_rules, improved_rules, plain_rules
from glidein_sim.report import sweep_table, table, write_json
from glidein_sim.scenario import Scenario, load_document, override, parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glidein-sim",
        description="Simulate sites, pilots and a workload in virtual time with glidein's own scheduling code.",
    )
    p.add_argument("scenario", type=Path, help="a scenario TOML file (see examples/sim/)")
    p.add_argument(
        "--rules",
        choices=("both", "all", "plain", "backfill", "improved"),
        default="both",
        help="plain: the greedy fill as it was; backfill: longest fit in the last 3 h, GPU first and "
        "reservations; improved: backfill with planned last jobs and retiring pilots that leave "
        "(default: both = plain and improved, side by side; all: the three)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one scenario key")
    p.add_argument("--sweep", metavar="KEY=V1,V2,...", help="run once per value and print one row each")
    p.add_argument("--out", type=Path, default=Path("sim-out"), help="where the JSON and plots go (default sim-out/)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    return p


def _key_value(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise ValidationError(f"{what} {text!r} is not KEY=VALUE.", hint="For example: pilot.walltime=24h")
    return key.strip(), value.strip()


def _rules(which: str, sc: Scenario) -> list[Rules]:
    named = {"plain": plain_rules(), "backfill": backfill_rules(sc), "improved": improved_rules(sc)}
    if which == "all":
        return list(named.values())
    return [named[which]] if which in named else [named["plain"], named["improved"]]


def _run(sc: Scenario, which: str) -> list[tuple[Rules, Simulation, dict[str, Any], float]]:
    out = []
    for rules in _rules(which, sc):
        t0 = time.perf_counter()
        sim = simulate(sc, rules)
        out.append((rules, sim, summary(sim.tally, sim.ramp_cores), time.perf_counter() - t0))
    return out


def _main(args: argparse.Namespace) -> int:
    doc = load_document(args.scenario)
    for item in args.set:
        doc = override(doc, *_key_value(item, "--set"))
    path = str(args.scenario)
    if args.sweep:
        key, values = _key_value(args.sweep, "--sweep")
        rows: list[tuple[str, str, dict[str, Any]]] = []
        for value in [v.strip() for v in values.split(",") if v.strip()]:
            sc = parse(path, override(doc, key, value))
            rows.extend((value, rules.label, res) for rules, _, res, _ in _run(sc, args.rules))
        write_json(args.out / f"{args.scenario.stem}-sweep.json", {"key": key, "rows": rows})
        print(json.dumps(rows, indent=2) if args.json else sweep_table(key, rows))
        return 0
    sc = parse(path, doc)
    runs = _run(sc, args.rules)
    result = {
        "scenario": sc.name,
        "cores": sc.cores,
        "simulated_s": sc.duration_s,
        "runs": {rules.label: {**res, "wall_s": round(wall, 2)} for rules, _, res, wall in runs},
    }
    write_json(args.out / f"{args.scenario.stem}.json", result)
    plots: list[Path] = []
    if not args.no_plots:
        from glidein_sim.plots import plot

        plots = plot([(r.label, sim.timeline) for r, sim, _, _ in runs], args.out, args.scenario.stem)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    days = sc.duration_s / 86400
    title = f"{sc.name}: {sc.cores:,} cores at {len(sc.sites)} site(s), {days:g} simulated days"
    print(table([(r.label, res) for r, _, res, _ in runs], title))
    took = ", ".join(f"{r.label} {wall:.1f} s" for r, _, _, wall in runs)
    print(f"\nran in {took}; JSON: {args.out / (args.scenario.stem + '.json')}")
    for p in plots:
        print(f"plot: {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except GlideinError as exc:
        print(f"glidein-sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
