"""Held pilots: release what passes, remove what will not clear, back off per pilot."""

from __future__ import annotations

from glidein_client.site.decisions import MAX_HOLDS, hold_actions, release_after_s
from glidein_client.site.schedulers.base import HoldInfo, PilotJob, PilotState

NOW = 1_800_000_000.0


def held(batch_id: str, code: int, *, holds: int = 1, held_for_s: float = 3600.0) -> tuple[PilotJob, HoldInfo]:
    return (
        PilotJob(batch_id=batch_id, pilot_id=1, state=PilotState.HELD),
        HoldInfo(code=code, subcode=0, reason="why", num_holds=holds, since=NOW - held_for_s),
    )


def test_transfer_trouble_is_released_and_deliberate_holds_removed() -> None:
    d = hold_actions([held("1.0", 13), held("2.0", 1), held("3.0", 26), held("4.0", 12)], now=NOW)
    assert d.release == ("1.0", "4.0")
    assert d.remove == ("2.0", "3.0")
    assert any("will not clear by itself" in r for r in d.reasons)


def test_release_waits_longer_after_each_hold() -> None:
    assert release_after_s(1) == 60 and release_after_s(2) == 120 and release_after_s(3) == 240
    assert release_after_s(20) == 3600
    assert hold_actions([held("1.0", 13, holds=3, held_for_s=100)], now=NOW).release == ()
    assert hold_actions([held("1.0", 13, holds=3, held_for_s=300)], now=NOW).release == ("1.0",)


def test_pilot_held_too_often_is_removed() -> None:
    d = hold_actions([held("1.0", 13, holds=MAX_HOLDS + 1)], now=NOW)
    assert d.remove == ("1.0",) and d.release == ()


def test_walltime_holds_are_left_to_the_timeout_path() -> None:
    d = hold_actions([held("1.0", 47)], now=NOW)
    assert d.release == () and d.remove == ()


def test_site_backoff_submits_nothing_then_one_probe() -> None:
    from glidein_client.site.config import LimitsSection
    from glidein_client.site.decisions import decide

    limits = LimitsSection(max_pilots=10, max_idle_pilots=5, max_submit_per_cycle=5)
    assert decide(8, [], limits, now=NOW, max_queued_s=0).submit == 5
    paused = decide(8, [], limits, now=NOW, max_queued_s=0, start_failures=3, backoff_s=120)
    assert paused.submit == 0 and "back-off" in paused.reasons[-1]
    probe = decide(8, [], limits, now=NOW, max_queued_s=0, start_failures=4, backoff_s=0)
    assert probe.submit == 1
    queued = PilotJob(batch_id="9.0", pilot_id=9, state=PilotState.QUEUED, submitted_at=NOW)
    assert decide(8, [queued], limits, now=NOW, max_queued_s=0, start_failures=4).submit == 0
