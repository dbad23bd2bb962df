"""glidein-sim: exact results on small hand-computed cases, and the same code as the real paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import glidein_client.pilot.backlog as real_backlog
import glidein_client.pilot.partition as partition
import glidein_client.pilot.pilot as real_pilot
import glidein_client.pilot.stats as real_stats
import glidein_client.site.client as real_client
import glidein_client.site.decisions as decisions
import glidein_server.policy.matchmaking as matchmaking
import glidein_server.store.sqlite_attempts as real_attempts
import glidein_server.store.sqlite_pilots as real_store
import glidein_server.store.sqlite_sites as real_sites
import glidein_sim.engine as engine
from glidein_sim.cli import main
from glidein_sim.engine import simulate
from glidein_sim.model import improved_rules, plain_rules
from glidein_sim.scenario import parse

HOUR = 3600.0


def scenario(pilot: dict[str, Any], site: dict[str, Any], *work: dict[str, Any], **sim: Any) -> dict[str, Any]:
    return {
        "sim": {"duration": "1d", **sim},
        "pilot": {"memory_mb": 8000, "idle_timeout": "2m", "end_margin": "5s", **pilot},
        "site": [{"name": "s", "queue_wait": "0", "cycle": "2m", "max_pilots": 10, "max_idle_pilots": 10, **site}],
        "workload": list(work),
    }


def test_two_pilots_four_jobs_exact_efficiency() -> None:
    # Two 2-core pilots start at t=0 (4 single-core jobs need 2 pilots), each runs two 1 h jobs,
    # then idles 2 min and leaves: busy 4 core-h out of 4 cores x (1 h + 120 s) allocated.
    doc = scenario(
        {"cpus": 2, "walltime": "10h"},
        {"nodes": 2, "cores_per_node": 2},
        {"cpus": 1, "memory_mb": 100, "runtime": "1h", "walltime": "2h", "count": 4},
    )
    sim = simulate(parse("t.toml", doc), plain_rules())
    t = sim.tally
    assert t.pilots == 2
    assert t.jobs_done == 4
    assert t.busy_core_s == 4 * HOUR
    assert t.allocated_core_s == 4 * (HOUR + 120)
    assert t.busy_core_s / t.allocated_core_s == pytest.approx(3600 / 3720, abs=1e-12)
    # The last 2 h of each pilot (its whole 62 min life) held 2 x 120 idle core-seconds.
    assert t.drain_idle_core_s == pytest.approx(2 * 2 * 120)
    assert t.wait_single == [0.0] * 4


def test_a_pilot_near_its_end_takes_no_job_it_cannot_finish() -> None:
    # One 1-core pilot of 3 h: jobs of 1 h run 0-1 h and 1-2 h; at 2 h only 3595 s are left,
    # so the third job stays queued; the pilot idles 10 min and leaves at 2h10m.
    doc = scenario(
        {"cpus": 1, "walltime": "3h", "idle_timeout": "10m"},
        {"nodes": 1, "cores_per_node": 1, "max_pilots": 1},
        {"cpus": 1, "memory_mb": 100, "runtime": "1h", "walltime": "1h", "count": 3},
        duration="130m",
    )
    t = simulate(parse("t.toml", doc), plain_rules()).tally
    assert t.jobs_done == 2
    assert t.busy_core_s == 2 * HOUR
    assert t.allocated_core_s == 7800
    assert t.busy_core_s / t.allocated_core_s == pytest.approx(7200 / 7800, abs=1e-12)
    assert t.drain_idle_core_s == pytest.approx(600)  # the last hour (the longest walltime) held 10 idle minutes


def test_a_gpu_pilot_keeps_its_gpu_for_the_gpu_job() -> None:
    # A 4-core/1-GPU pilot, four CPU-only jobs and one 1-core GPU job, all queued at t=0.
    # As it was: the CPU jobs (earlier ids) fill all four cores and the GPU job waits 2 h.
    # Improved: the GPU job starts at once on the GPU and one core.
    doc = scenario(
        {"cpus": 4, "gpus": 1, "walltime": "10h"},
        {"nodes": 1, "cores_per_node": 4, "gpus_per_node": 1, "max_pilots": 1},
        {"name": "cpu", "cpus": 1, "memory_mb": 100, "runtime": "2h", "walltime": "3h", "count": 4},
        {"name": "gpu", "cpus": 1, "gpus": 1, "memory_mb": 100, "runtime": "1h", "walltime": "2h", "count": 1},
    )
    sc = parse("t.toml", doc)
    assert simulate(sc, plain_rules()).tally.wait_gpu == [2 * HOUR]
    assert simulate(sc, improved_rules(sc)).tally.wait_gpu == [0.0]


def test_a_starving_multicore_job_gets_a_bounded_reservation() -> None:
    # One 4-core pilot kept full of 1-core jobs; a 4-core job arrives later. Without a reservation
    # it waits until the single-core stream dries up; with one, the pilot gathers its cores.
    doc = scenario(
        {"cpus": 4, "walltime": "2d"},
        {"nodes": 1, "cores_per_node": 4, "max_pilots": 1},
        {
            "name": "one",
            "cpus": 1,
            "memory_mb": 100,
            "runtime": {"dist": "uniform", "low": "1h", "high": "2h"},
            "walltime": "2h",
            "keep_idle": 20,
        },
        {"name": "four", "cpus": 4, "memory_mb": 100, "runtime": "1h", "walltime": "2h", "rate_per_h": 1},
        duration="1d",
    )
    sc = parse("t.toml", doc)
    plain, improved = simulate(sc, plain_rules()).tally, simulate(sc, improved_rules(sc)).tally
    assert improved.reservations >= 1
    assert len(improved.wait_multi) >= 1
    assert (
        sorted(improved.wait_multi)[len(improved.wait_multi) // 2]
        < sorted(plain.wait_multi)[len(plain.wait_multi) // 2]
    )
    assert improved.busy_core_s < plain.busy_core_s  # the cost: cores held idle while they gather


def test_the_simulator_calls_the_functions_the_server_client_and_pilot_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # The very same function objects: the store's claim, the client's cycle, the pilot's dispatch.
    assert engine.select is real_store.select is matchmaking.select
    assert engine.site_demand is real_sites.dm.site_demand
    assert engine.decide is real_client.decide is decisions.decide
    # The pilot walks its backlog by shape: the same choices as plan_starts (tests/unit/test_backlog.py).
    assert engine.plan_starts is partition.plan_starts
    assert real_backlog.plan_starts_by_shape is partition.plan_starts_by_shape
    assert engine.failure_streak is real_stats.failure_streak is partition.failure_streak
    assert engine.SlotPool is real_pilot.SlotPool
    assert engine.plan_attempt_end is real_attempts.plan_attempt_end
    calls: dict[str, int] = {}

    def spy(name: str) -> None:
        real = getattr(engine, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)

        monkeypatch.setattr(engine, name, wrapper)

    for name in ("select", "site_demand", "decide", "plan_starts", "failure_streak"):
        spy(name)
    doc = scenario(
        {"cpus": 2, "walltime": "10h"},
        {"nodes": 2, "cores_per_node": 2},
        {"cpus": 1, "memory_mb": 100, "runtime": "1h", "walltime": "2h", "count": 4},
    )
    simulate(parse("t.toml", doc), plain_rules())
    assert set(calls) == {"select", "site_demand", "decide", "plan_starts", "failure_streak"}


def test_the_cli_prints_the_table_writes_json_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = Path(__file__).parents[2] / "examples" / "sim" / "cms-multicore.toml"
    rc = main(
        [
            str(doc),
            "--set",
            "sim.duration=6h",
            "--set",
            "site.0.nodes=5",
            "--set",
            "site.1.nodes=2",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert "pilot internal efficiency" in out and "as it was" in out and "improved" in out
    result = json.loads((tmp_path / "cms-multicore.json").read_text())
    assert set(result["runs"]) == {"as it was", "improved"}
    assert (tmp_path / "cms-multicore-cores.png").stat().st_size > 1000
    assert (tmp_path / "cms-multicore-occupancy.png").stat().st_size > 1000


def test_a_sweep_prints_one_row_per_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = Path(__file__).parents[2] / "examples" / "sim" / "cms-multicore.toml"
    args = [
        str(doc),
        "--set",
        "sim.duration=3h",
        "--set",
        "site.0.nodes=3",
        "--set",
        "site.1.nodes=2",
        "--rules",
        "plain",
        "--out",
        str(tmp_path),
    ]
    assert main([*args, "--sweep", "pilot.walltime=12h,24h"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "as it was" in line]
    assert [r.split()[0] for r in rows] == ["12h", "24h"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nope.toml"], "No scenario file at nope.toml"),
        (["{doc}", "--set", "site.0.nodes=-3"], "site[0].nodes = -3 is not valid"),
        (["{doc}", "--set", "pilot.walltime=soon"], "pilot.walltime = 'soon' is not valid"),
        (["{doc}", "--set", "sim.colour=red"], "unknown key sim.colour"),
        (["{doc}", "--sweep", "pilot.walltime"], "is not KEY=VALUE"),
    ],
)
def test_bad_input_gets_a_plain_error(args: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    doc = str(Path(__file__).parents[2] / "examples" / "sim" / "cms-multicore.toml")
    assert main([a.replace("{doc}", doc) for a in args]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err
