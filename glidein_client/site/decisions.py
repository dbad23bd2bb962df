"""How many pilots to submit and which to remove: a pure function over plain data.

The site client asks the server for its demand (pilots still needed, already net of
the free capacity of running pilots), asks the batch system for its pilots, and lets
:func:`decide` pick the numbers within the site's limits. No I/O happens here, so the
same function drives the real client, the tests and a simulation.

Pilots that are not running yet (queued, held or in a state the batch system did not
explain) are capacity on its way, so they count against the demand. Running pilots are
never removed: they leave by themselves when they run out of work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from glidein_client.site.config import LimitsSection
from glidein_client.site.schedulers.base import HoldInfo, PilotJob, PilotState
from glidein_client.wire.schema import PilotShape
from glidein_client.wire.units import format_duration

#: The decisions and the plain data they take: the simulator imports all of it from here.
__all__ = [
    "Decision",
    "HoldDecision",
    "HoldInfo",
    "LimitsSection",
    "PilotJob",
    "PilotState",
    "decide",
    "hold_actions",
    "idle_backoff_s",
    "idle_out_note",
    "release_after_s",
]

#: States of pilots that will bring capacity but do not run yet.
WAITING = frozenset({PilotState.QUEUED, PilotState.HELD, PilotState.UNKNOWN})
#: Waiting states the client may remove. UNKNOWN is left alone: it may be a running pilot
#: that the batch system failed to describe.
REMOVABLE = frozenset({PilotState.QUEUED, PilotState.HELD})
#: After this many pilots in a row failed at start, submit one pilot at a time (a probe).
FAILURES_BEFORE_PROBING = 3
#: After this many pilots in a row left idle without ever claiming a job while the demand stayed,
#: back off: the jobs the server counts for this site probably do not fit its pilots.
IDLE_OUTS_BEFORE_BACKOFF = 3


@dataclass(frozen=True)
class Decision:
    submit: int
    remove: tuple[str, ...]  # batch ids to cancel
    reasons: tuple[str, ...]  # one short human line each (why this number)


def decide(
    demand_pilots: int,
    pilots: Sequence[PilotJob],
    limits: LimitsSection,
    *,
    now: float,
    max_queued_s: float,
    start_failures: int = 0,
    backoff_s: float = 0.0,
    draining: bool = False,
    idle_outs: int = 0,
    idle_out_age_s: float = float("inf"),
) -> Decision:
    """Choose how many pilots to submit and which waiting pilots to remove.

    ``submit = max(0, min(demand - waiting, max_idle_pilots - waiting, max_pilots - active,
    max_submit_per_cycle))``. Removed are waiting pilots queued longer than ``max_queued_s``
    (oldest first; ``max_queued_s <= 0`` turns this off) and waiting pilots beyond the demand
    (newest first). Pilots being removed still count as waiting in this cycle's submit
    number, so a cancel that the batch system carries out late never leads to over-submission;
    their replacements, if still needed, follow in the next cycle.

    A site whose last ``start_failures`` pilots ended without starting work is in back-off:
    nothing is submitted while ``backoff_s`` (from the server) is positive, then one probe
    pilot at a time until a pilot starts. Likewise after ``idle_outs`` pilots in a row left
    idle without claiming a job (the latest ``idle_out_age_s`` ago): nothing for
    :func:`idle_backoff_s`, then one probe pilot at a time until a pilot runs a job.

    A ``draining`` site (``glidein-client drain``) submits nothing and removes all its waiting pilots.
    """
    demand = max(0, demand_pilots)
    active = [p for p in pilots if p.state.active]
    waiting = [p for p in active if p.state in WAITING]
    running = len(active) - len(waiting)
    n_waiting = len(waiting)
    reasons: list[str] = []

    # --- removals ----------------------------------------------------------------------------
    removable = [p for p in waiting if p.state in REMOVABLE]
    if draining:
        reasons.append("draining (glidein-client drain): no new pilots; `glidein-client resume` ends it")
        if removable:
            reasons.append(f"removing {len(removable)} waiting pilot(s): the site is draining")
        return Decision(submit=0, remove=tuple(p.batch_id for p in removable), reasons=tuple(reasons))
    stale: list[PilotJob] = []
    if max_queued_s > 0:
        stale = sorted(
            (p for p in removable if p.submitted_at is not None and now - p.submitted_at > max_queued_s),
            key=lambda p: (p.submitted_at or 0.0, p.batch_id),
        )
        if stale:
            reasons.append(
                f"removing {len(stale)} pilot(s) waiting longer than limits.max_queued_s "
                f"({format_duration(max_queued_s)})"
            )
    stale_ids = {p.batch_id for p in stale}
    left = [p for p in removable if p.batch_id not in stale_ids]
    excess = min(len(left), n_waiting - len(stale) - demand)
    surplus: list[PilotJob] = []
    if excess > 0:
        newest_first = sorted(left, key=lambda p: (_age_key(p, now), p.batch_id), reverse=True)
        surplus = newest_first[:excess]
        what = "no demand left" if demand == 0 else f"demand is {demand} pilot(s)"
        reasons.append(f"removing {len(surplus)} waiting pilot(s) beyond the demand ({what})")
    remove = tuple(p.batch_id for p in stale + surplus)

    # --- submissions -------------------------------------------------------------------------
    bounds = (
        (demand - n_waiting, f"demand {demand}, {n_waiting} waiting"),
        (limits.max_idle_pilots - n_waiting, f"limits.max_idle_pilots={limits.max_idle_pilots}, {n_waiting} waiting"),
        (limits.max_pilots - len(active), f"limits.max_pilots={limits.max_pilots}, {len(active)} active"),
        (limits.max_submit_per_cycle, f"limits.max_submit_per_cycle={limits.max_submit_per_cycle}"),
    )
    value, why = min(bounds, key=lambda b: b[0])
    submit = max(0, value)
    if submit > 0 and backoff_s > 0:
        submit, why = (
            0,
            (f"back-off: {start_failures} pilots in a row failed at start; next try in {format_duration(backoff_s)}"),
        )
        reasons.append(f"submitting none: {why}")
        return Decision(submit=0, remove=remove, reasons=tuple(reasons))
    if submit > 0 and start_failures >= FAILURES_BEFORE_PROBING:
        if n_waiting:
            reasons.append(f"submitting none: {start_failures} pilots failed at start; waiting for the probe pilot")
            return Decision(submit=0, remove=remove, reasons=tuple(reasons))
        submit, why = 1, f"one probe pilot: {start_failures} pilots in a row failed at start"
    if submit > 0 and idle_outs >= IDLE_OUTS_BEFORE_BACKOFF:
        wait_s = idle_backoff_s(idle_outs) - idle_out_age_s
        if wait_s > 0 or len(active):
            later = f"one probe pilot in {format_duration(wait_s)}" if wait_s > 0 else "waiting for the probe pilot"
            reasons.append(f"submitting none: {idle_outs} pilots in a row left idle without a job; {later}")
            return Decision(submit=0, remove=remove, reasons=tuple(reasons))
        submit, why = 1, f"one probe pilot: {idle_outs} pilots in a row left idle without a job"
    if submit > 0:
        reasons.append(f"submitting {submit}: {why}")
    elif demand == 0:
        reasons.append(f"submitting none: no demand ({running} running, {n_waiting} waiting)")
    else:
        reasons.append(f"submitting none: {why}")
    return Decision(submit=submit, remove=remove, reasons=tuple(reasons))


def idle_backoff_s(idle_outs: int) -> float:
    """After ``idle_outs`` pilots in a row left idle: wait this long after the latest before a probe
    (2 min, doubling with each further one, at most 1 h)."""
    if idle_outs < IDLE_OUTS_BEFORE_BACKOFF:
        return 0.0
    return float(min(120.0 * 2.0 ** (idle_outs - IDLE_OUTS_BEFORE_BACKOFF), 3600.0))


def idle_out_note(idle_outs: int, shape: PilotShape, config: str) -> str:
    """The one plain line for the log and ``glidein-client status``: the likely cause and the keys to check."""
    return (
        f"{idle_outs} pilots in a row left idle without claiming a job while the server still counts jobs for "
        f"this site: those jobs probably do not fit this site's pilots ({shape.cpus} core(s), {shape.memory_mb} MB, "
        f"{format_duration(shape.walltime_s)} walltime less about a minute of start-up and margin). Compare with "
        f"the idle jobs' cpus, memory and walltime (`glidein status --state idle`) and check pilot.cpus, "
        f"pilot.memory and pilot.walltime in {config} (and any batch.extra_directives that change what pilots get); "
        "submitting one probe pilot at a time meanwhile."
    )


def _age_key(p: PilotJob, now: float) -> float:
    """Submission time; a pilot of unknown age counts as just submitted."""
    return p.submitted_at if p.submitted_at is not None else now


# --- held pilots -------------------------------------------------------------------------------

#: HTCondor HoldReasonCode values of passing trouble on a node or in a transfer, worth a release:
#: FailedToCreateProcess, UnableToOpen{Output,Input}{,Stream}, InvalidTransferAck, TransferOutputError,
#: TransferInputError, InvalidTransferGoAhead, HookPrepareJobFailure, StartdHeldJob, UnableToInitUserLog,
#: NoCompatibleShadow, SingularityTestFailed, HookShadowPrepareJobFailure (HTCondor 23 hold codes).
RECOVERABLE_HOLD_CODES = frozenset({6, 7, 8, 9, 10, 11, 12, 13, 18, 19, 21, 22, 24, 45, 48})
#: A pilot held more often than this is removed rather than released again.
MAX_HOLDS = 5
#: The first release waits this long after the hold; each further hold doubles it (at most an hour).
FIRST_RELEASE_S = 60.0


@dataclass(frozen=True)
class HoldDecision:
    release: tuple[str, ...]
    remove: tuple[str, ...]
    reasons: tuple[str, ...]


def release_after_s(num_holds: int) -> float:
    return float(min(FIRST_RELEASE_S * 2.0 ** max(0, num_holds - 1), 3600.0))


def hold_actions(held: Sequence[tuple[PilotJob, HoldInfo]], *, now: float) -> HoldDecision:
    """Release pilots held for passing trouble (with a back-off per pilot), remove the others.

    Holds put on purpose (by a person or a policy) or caused by the pilot's own request
    (bad working directory, too large, wrong image) will not go away by themselves: those
    pilots are removed, and the demand brings new ones. A pilot held ``MAX_HOLDS`` times is
    removed too. The back-off needs no local state: it comes from the batch system's own
    count of holds and the time the pilot entered the hold.
    """
    release: list[str] = []
    remove: list[str] = []
    reasons: list[str] = []
    for pilot, hold in held:
        holds = hold.num_holds or 1
        if hold.walltime:
            continue  # the backend reports these as TIMEOUT; nothing to release
        if hold.code not in RECOVERABLE_HOLD_CODES:
            remove.append(pilot.batch_id)
            reasons.append(f"removing held pilot {pilot.batch_id}: {hold} (will not clear by itself)")
        elif holds > MAX_HOLDS:
            remove.append(pilot.batch_id)
            reasons.append(f"removing pilot {pilot.batch_id}: held {holds} times, last {hold}")
        elif hold.since is None or now - hold.since >= release_after_s(holds):
            release.append(pilot.batch_id)
            reasons.append(f"releasing pilot {pilot.batch_id} (hold {holds} of at most {MAX_HOLDS}): {hold}")
    return HoldDecision(release=tuple(release), remove=tuple(remove), reasons=tuple(reasons))
