"""Reservations: the simulator and both stores decide with the same functions, and the stores'
reading of their rows (:func:`glidein_server.store.reservations.decide`) gives the simulator's answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

import glidein_server.policy.reservation as reservation
import glidein_server.store.postgres_reservations as pg_res
import glidein_server.store.reservations as store_res
import glidein_server.store.sqlite_reservations as sqlite_res
from glidein_server.policy.matchmaking import Candidate, Capacity
from glidein_server.policy.reservation import ReservationPolicy, Reservations, Waiting
from glidein_server.server import open_store
from glidein_server.settings import ServerSettings, StateDir
from glidein_sim.engine import simulate
from glidein_sim.model import improved_rules
from glidein_sim.scenario import parse

POLICY = ReservationPolicy(after_s=1800, max_hold_s=3600)
TOTAL = Capacity(4, 16_000, 0, 100_000)


def test_the_stores_use_the_simulators_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    assert store_res.keeps is reservation.keeps and store_res.starving is reservation.starving
    assert store_res.rests_until is reservation.rests_until
    assert sqlite_res.decide is store_res.decide is pg_res.decide
    calls: dict[str, int] = {}
    for name in ("keeps", "starving"):
        real = getattr(reservation, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(reservation, name, spy)
    doc = {
        "sim": {"duration": "12h"},
        "pilot": {"memory_mb": 8000, "idle_timeout": "2m", "end_margin": "5s", "cpus": 4, "walltime": "2d"},
        "site": [{"name": "s", "queue_wait": "0", "cycle": "2m", "max_pilots": 1, "nodes": 1, "cores_per_node": 4}],
        "workload": [
            {"name": "one", "cpus": 1, "memory_mb": 100, "runtime": "1h", "walltime": "2h", "keep_idle": 20},
            {"name": "four", "cpus": 4, "memory_mb": 100, "runtime": "1h", "walltime": "2h", "rate_per_h": 1},
        ],
    }
    sc = parse("t.toml", doc)
    assert simulate(sc, improved_rules(sc)).tally.reservations >= 1
    assert calls.get("keeps", 0) >= 1 and calls.get("starving", 0) >= 1


def row(
    kind: int,
    job: Candidate | None,
    since: float,
    *,
    rest: float = 0.0,
    prio: int = 0,
    held: bool = False,
    owner: str | None = "ann",
) -> Any:
    if job is None:
        return (kind, None, since, rest, None, None, None, None, None, prio, held, owner)
    return (kind, job.job_id, since, rest, *job[1:], prio, held, owner)


def test_decide_gives_what_the_simulators_reservations_give() -> None:
    big, other = Candidate(7, 4, 1000, 0, 0, 3600), Candidate(9, 2, 1000, 0, 0, 3600)
    waiting = [row(1, other, 0.0), row(1, big, 0.0)]
    r = Reservations(POLICY)
    sim = r.for_pilot(1, [Waiting(big, 0.0), Waiting(other, 0.0)], TOTAL, 36_000, 2000)
    # Claim order puts the 4-core job first, whatever order the rows come in.
    assert store_res.decide(waiting, TOTAL, 36_000, 2000, POLICY) == (sim, store_res.Write.BEGIN, 0.0)
    assert sim == big
    assert store_res.decide(waiting, TOTAL, 36_000, 1000, POLICY)[1] is store_res.Write.NONE  # too young
    held = [row(1, big, 0.0, held=True), row(1, other, 0.0)]
    assert store_res.decide(held, TOTAL, 36_000, 2000, POLICY)[0] == other  # the other pilot's job is skipped
    own = [row(0, big, 2000.0), *waiting]
    assert store_res.decide(own, TOTAL, 36_000, 5000, POLICY) == (big, store_res.Write.NONE, 0.0)
    assert r.for_pilot(1, [], TOTAL, 36_000, 5700) is None
    assert store_res.decide(own, TOTAL, 36_000, 5700, POLICY) == (None, store_res.Write.LAPSE, 5700 + 3600)
    resting = [row(0, None, 2000.0, rest=9300.0), *waiting]
    assert store_res.decide(resting, TOTAL, 36_000, 6000, POLICY) == (None, store_res.Write.NONE, 0.0)
    assert store_res.decide(resting, TOTAL, 36_000, 9301, POLICY)[1] is store_res.Write.BEGIN
    # Its job was claimed (the row's job columns are NULL once the job is not idle): a new hold may begin.
    claimed = [(0, big.job_id, 2000.0, 0.0, None, None, None, None, None, 0, False, None), row(1, other, 0.0)]
    assert store_res.decide(claimed, TOTAL, 36_000, 2500, POLICY) == (other, store_res.Write.BEGIN, 0.0)


def test_one_owner_has_at_most_max_per_owner_holds_whatever_the_shapes() -> None:
    policy = ReservationPolicy(after_s=1800, max_hold_s=3600, max_per_owner=2)
    hers = [Candidate(i, 4, 1000 + i, 0, 0, 3600) for i in range(1, 5)]  # four shapes, one user
    his = Candidate(9, 4, 1000, 0, 0, 3600)
    r = Reservations(policy)
    waiting = [*(Waiting(j, 0.0, "mallory") for j in hers), Waiting(his, 0.0, "bob")]
    assert [r.for_pilot(p, waiting, TOTAL, 36_000, 2000) for p in (1, 2, 3, 4)] == [hers[0], hers[1], his, None]
    rows = [*(row(1, j, 0.0, owner="mallory") for j in hers), row(1, his, 0.0, owner="bob")]
    in_force = [
        row(2, hers[0], 2000.0, held=True, owner="mallory"),
        row(2, hers[1], 2000.0, held=True, owner="mallory"),
    ]
    assert store_res.decide(rows, TOTAL, 36_000, 2000, policy)[0] == hers[0]
    assert store_res.decide([*rows, *in_force], TOTAL, 36_000, 2000, policy)[0] == his  # her two are in force
    no_limit = ReservationPolicy(after_s=1800, max_hold_s=3600, max_per_owner=0)
    assert store_res.decide([*rows, *in_force], TOTAL, 36_000, 2000, no_limit)[0] == hers[0]
    unknown = Reservations(policy)  # the simulator's jobs have no owner: not limited per owner
    anon = [Waiting(j, 0.0) for j in hers]
    assert [unknown.for_pilot(p, anon, TOTAL, 36_000, 2000) for p in (1, 2, 3, 4)] == hers


def test_the_gate_opens_when_a_hold_is_in_force_or_a_job_may_starve() -> None:
    gate = store_res.Gate(POLICY)
    assert gate.due(0.0) and gate.ttl_s == 30.0
    gate.refresh(100.0, 0, None)  # no idle multicore job
    assert not gate.due(129.0) and gate.due(130.0) and not gate.open(10_000.0)
    gate.refresh(130.0, 0, 120.0)  # the oldest was submitted at 120 s: no hold before 1920 s
    assert not gate.open(1919.0) and gate.open(1920.0)
    gate.refresh(160.0, 1, 150.0)  # a hold is in force
    assert gate.open(160.0)
    assert store_res.Gate(ReservationPolicy(after_s=40, max_hold_s=60)).ttl_s == 10.0


def test_server_settings_give_the_stores_their_reservation_policy(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    store = open_store(state, ServerSettings())
    assert store.reservation == ReservationPolicy(after_s=1800.0, max_hold_s=3600.0)  # type: ignore[attr-defined]
    assert ReservationPolicy() == store.reservation  # type: ignore[attr-defined]  # as the simulator's seed scenario
    for off in ({"reservation_after_s": 0.0}, {"reservation_max_hold_s": 0.0}):
        assert open_store(state, msgspec.structs.replace(ServerSettings(), **off)).reservation is None  # type: ignore[attr-defined]
    tuned = open_store(
        state, ServerSettings(reservation_after_s=600.0, reservation_max_hold_s=900.0, reservation_per_owner=2)
    )
    assert tuned.reservation == ReservationPolicy(after_s=600.0, max_hold_s=900.0, max_per_owner=2)  # type: ignore[attr-defined]
