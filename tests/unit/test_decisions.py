"""decide(): how many pilots to submit and which to remove, within the site's limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glidein_client.site.config import LimitsSection
from glidein_client.site.decisions import Decision, decide
from glidein_client.site.schedulers.base import PilotJob, PilotState

NOW = 1_000_000.0
DAY = 86400.0


def pilot(n: int, state: PilotState, age_s: float | None = 60.0) -> PilotJob:
    return PilotJob(
        batch_id=f"b{n}",
        pilot_id=n,
        state=state,
        submitted_at=None if age_s is None else NOW - age_s,
    )


def run(demand: int, pilots: list[PilotJob], max_queued_s: float = DAY, **limits: int) -> Decision:
    lim = LimitsSection(**{"max_pilots": 10, "max_idle_pilots": 5, "max_submit_per_cycle": 5, **limits})
    return decide(demand, pilots, lim, now=NOW, max_queued_s=max_queued_s)


def test_no_demand_no_pilots_does_nothing() -> None:
    d = run(0, [])
    assert (d.submit, d.remove) == (0, ())
    assert d.reasons == ("submitting none: no demand (0 running, 0 waiting)",)


def test_demand_is_met_by_submitting() -> None:
    d = run(3, [])
    assert d.submit == 3
    assert d.remove == ()
    assert d.reasons == ("submitting 3: demand 3, 0 waiting",)


def test_queued_pilots_count_against_demand() -> None:
    pilots = [pilot(1, PilotState.QUEUED), pilot(2, PilotState.HELD), pilot(3, PilotState.UNKNOWN)]
    assert run(4, pilots).submit == 1
    assert run(3, pilots).submit == 0


def test_running_pilots_do_not_count_against_demand() -> None:
    # The server's demand is already net of the free capacity of running pilots.
    pilots = [pilot(i, PilotState.RUNNING) for i in range(4)]
    assert run(3, pilots).submit == 3


def test_finished_pilots_are_ignored() -> None:
    states = [PilotState.DONE, PilotState.FAILED, PilotState.TIMEOUT, PilotState.CANCELLED]
    pilots = [pilot(i, s) for i, s in enumerate(states)]
    d = run(2, pilots, max_pilots=2)
    assert d.submit == 2
    assert d.remove == ()


def test_capped_by_max_submit_per_cycle() -> None:
    d = run(50, [], max_submit_per_cycle=4, max_idle_pilots=100, max_pilots=100)
    assert d.submit == 4
    assert "limits.max_submit_per_cycle=4" in d.reasons[-1]


def test_capped_by_max_idle_pilots() -> None:
    d = run(50, [pilot(1, PilotState.QUEUED)], max_idle_pilots=3)
    assert d.submit == 2
    assert d.reasons[-1] == "submitting 2: limits.max_idle_pilots=3, 1 waiting"


def test_capped_by_max_pilots() -> None:
    pilots = [pilot(i, PilotState.RUNNING) for i in range(8)]
    d = run(50, pilots, max_pilots=10)
    assert d.submit == 2
    assert "limits.max_pilots=10, 8 active" in d.reasons[-1]


def test_above_max_pilots_submits_none_and_removes_no_running() -> None:
    pilots = [pilot(i, PilotState.RUNNING) for i in range(12)]
    d = run(5, pilots, max_pilots=10)
    assert d.submit == 0
    assert d.remove == ()
    assert d.reasons == ("submitting none: limits.max_pilots=10, 12 active",)


def test_negative_demand_counts_as_none() -> None:
    d = run(-3, [pilot(1, PilotState.QUEUED)])
    assert d.submit == 0
    assert d.remove == ("b1",)


def test_demand_gone_removes_all_queued_but_no_running() -> None:
    pilots = [pilot(1, PilotState.QUEUED), pilot(2, PilotState.RUNNING), pilot(3, PilotState.HELD)]
    d = run(0, pilots)
    assert d.submit == 0
    assert sorted(d.remove) == ["b1", "b3"]
    assert d.reasons[0] == "removing 2 waiting pilot(s) beyond the demand (no demand left)"


def test_smaller_demand_removes_newest_queued_first() -> None:
    pilots = [
        pilot(1, PilotState.QUEUED, age_s=300),
        pilot(2, PilotState.QUEUED, age_s=100),
        pilot(3, PilotState.QUEUED, age_s=200),
        pilot(4, PilotState.QUEUED, age_s=None),  # unknown age counts as newest
    ]
    d = run(1, pilots)
    assert d.remove == ("b4", "b2", "b3")
    assert d.submit == 0
    assert "demand is 1 pilot(s)" in d.reasons[0]


def test_unknown_state_is_never_removed() -> None:
    pilots = [pilot(1, PilotState.UNKNOWN), pilot(2, PilotState.QUEUED)]
    d = run(0, pilots)
    assert d.remove == ("b2",)


def test_long_queued_pilots_removed_oldest_first() -> None:
    pilots = [
        pilot(1, PilotState.QUEUED, age_s=2 * DAY),
        pilot(2, PilotState.QUEUED, age_s=3 * DAY),
        pilot(3, PilotState.QUEUED, age_s=60),
        pilot(4, PilotState.RUNNING, age_s=9 * DAY),
    ]
    d = run(3, pilots)
    assert d.remove == ("b2", "b1")
    assert d.reasons[0] == "removing 2 pilot(s) waiting longer than limits.max_queued_s (24h00m)"
    # the removed pilots still count as waiting in this cycle: replacements come next cycle
    assert d.submit == 0


def test_stale_removal_counts_toward_excess() -> None:
    pilots = [pilot(1, PilotState.QUEUED, age_s=2 * DAY), pilot(2, PilotState.QUEUED), pilot(3, PilotState.QUEUED)]
    d = run(1, pilots)
    assert d.remove == ("b1", "b3")  # the stale one, then the newest (ties: the later batch id)


def test_max_queued_zero_turns_off_stale_removal() -> None:
    d = run(1, [pilot(1, PilotState.QUEUED, age_s=100 * DAY)], max_queued_s=0)
    assert d.remove == ()


def test_unknown_submit_time_is_not_stale() -> None:
    d = run(1, [pilot(1, PilotState.QUEUED, age_s=None)])
    assert d.remove == ()


# --- properties ---------------------------------------------------------------------------------

states = st.sampled_from(list(PilotState))
pilot_lists = st.lists(
    st.tuples(states, st.one_of(st.none(), st.floats(min_value=0, max_value=10 * DAY))),
    max_size=40,
).map(lambda items: [pilot(i, s, a) for i, (s, a) in enumerate(items)])
limit_values = st.integers(min_value=0, max_value=30)


@settings(max_examples=500, deadline=None)
@given(
    demand=st.integers(min_value=-5, max_value=100),
    pilots=pilot_lists,
    max_pilots=limit_values,
    max_idle=limit_values,
    max_submit=limit_values,
    max_queued_s=st.floats(min_value=0, max_value=5 * DAY),
)
def test_decide_respects_limits(
    demand: int, pilots: list[PilotJob], max_pilots: int, max_idle: int, max_submit: int, max_queued_s: float
) -> None:
    limits = LimitsSection(max_pilots=max_pilots, max_idle_pilots=max_idle, max_submit_per_cycle=max_submit)
    d = decide(demand, pilots, limits, now=NOW, max_queued_s=max_queued_s)
    active = [p for p in pilots if p.state.active]
    waiting = [p for p in active if p.state not in (PilotState.RUNNING, PilotState.SUSPENDED)]
    by_id = {p.batch_id: p for p in pilots}

    assert d.submit >= 0
    assert d.submit <= max_submit
    assert d.submit == 0 or len(active) + d.submit <= max_pilots
    assert d.submit == 0 or len(waiting) + d.submit <= max_idle
    assert d.submit == 0 or len(waiting) + d.submit <= demand
    assert len(set(d.remove)) == len(d.remove)
    for batch_id in d.remove:
        assert by_id[batch_id].state in (PilotState.QUEUED, PilotState.HELD)
    # never removes more than the stale ones plus what exceeds the demand
    stale = [
        p
        for p in waiting
        if max_queued_s > 0
        and p.submitted_at is not None
        and NOW - p.submitted_at > max_queued_s
        and p.state is not PilotState.UNKNOWN
    ]
    assert len(d.remove) <= len(stale) + max(0, len(waiting) - len(stale) - max(demand, 0))
    # waiting pilots beyond the demand are all removed unless their state is unknown
    removable_left = [p for p in waiting if p.state is not PilotState.UNKNOWN]
    assert len(d.remove) >= min(len(removable_left), len(waiting) - max(demand, 0))
    assert d.reasons


# --- pilots that keep leaving idle, and a draining site ------------------------------------------


def test_pilots_leaving_idle_in_a_row_stop_submissions_then_one_probe() -> None:
    from glidein_client.site.decisions import IDLE_OUTS_BEFORE_BACKOFF, idle_backoff_s

    n = IDLE_OUTS_BEFORE_BACKOFF
    assert run(5, [], max_submit_per_cycle=5).submit == 5
    fewer = decide(
        5, [], LimitsSection(max_idle_pilots=5, max_submit_per_cycle=5), now=NOW, max_queued_s=DAY, idle_outs=n - 1
    )
    assert fewer.submit == 5  # two in a row may be chance
    fresh = decide(5, [], LimitsSection(), now=NOW, max_queued_s=DAY, idle_outs=n, idle_out_age_s=10)
    assert fresh.submit == 0
    assert fresh.reasons[-1] == f"submitting none: {n} pilots in a row left idle without a job; one probe pilot in 110s"
    later = decide(5, [], LimitsSection(), now=NOW, max_queued_s=DAY, idle_outs=n, idle_out_age_s=120)
    assert later.submit == 1 and "one probe pilot" in later.reasons[-1]
    probing = decide(
        5, [pilot(1, PilotState.QUEUED)], LimitsSection(), now=NOW, max_queued_s=DAY, idle_outs=n, idle_out_age_s=999
    )
    assert probing.submit == 0 and probing.reasons[-1].endswith("waiting for the probe pilot")
    assert [idle_backoff_s(k) for k in (n - 1, n, n + 1, n + 10)] == [0.0, 120.0, 240.0, 3600.0]
    none_wanted = decide(0, [], LimitsSection(), now=NOW, max_queued_s=DAY, idle_outs=n, idle_out_age_s=0)
    assert none_wanted.reasons[-1].startswith("submitting none: no demand")  # no demand: nothing to say


def test_a_draining_site_submits_none_and_removes_every_waiting_pilot() -> None:
    pilots = [pilot(1, PilotState.QUEUED), pilot(2, PilotState.HELD), pilot(3, PilotState.RUNNING)]
    decision = decide(9, pilots, LimitsSection(), now=NOW, max_queued_s=DAY, draining=True)
    assert decision.submit == 0
    assert sorted(decision.remove) == ["b1", "b2"]  # running pilots finish their jobs and leave by themselves
    assert decision.reasons[0].startswith("draining (glidein-client drain)")


def test_the_idle_note_names_the_shape_and_the_keys() -> None:
    from glidein_client.site.decisions import idle_out_note
    from glidein_client.wire.schema import PilotShape

    note = idle_out_note(3, PilotShape(cpus=2, memory_mb=2048, gpus=0, disk_mb=1000, walltime_s=3600), "/s.toml")
    assert note.startswith("3 pilots in a row left idle without claiming a job")
    assert "(2 core(s), 2048 MB, 60m00s walltime" in note and "pilot.memory and pilot.walltime in /s.toml" in note


@pytest.mark.parametrize(
    "output, idle",
    [
        ("x INFO pilot: pilot 4 leaving: idle for 120 s (ran 0 jobs, occupancy 0%)\n", True),
        ("x INFO pilot: pilot 4 leaving: idle for 120 s (ran 3 jobs, occupancy 40%)\n", False),
        ("x INFO pilot: pilot 4 leaving: received SIGTERM (ran 0 jobs, occupancy 0%)\n", False),
        ("x ERROR pilot: self-test failed, taking no work: disk\n", None),
    ],
)
def test_a_pilots_last_line_tells_whether_it_left_idle_without_a_job(output: str, idle: bool | None) -> None:
    from glidein_client.site.idle_outs import left_idle

    assert left_idle(output) is idle
