"""What HTCondor prints, read into pilot states: job ads of ``condor_q -json`` / ``condor_history -json``.

Pure functions apart from :class:`~.htcondor.HTCondorScheduler`, which runs the commands.
``JobStatus`` numbers map through :data:`JOB_STATUS` (names) and :data:`NATIVE_STATES`, refined
by :func:`ad_state` (exit code, hold reason, remove reason).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from glidein_client.site.schedulers.base import HoldInfo, PilotState
from glidein_client.wire.errors import SchedulerError

#: Seconds a pilot held at its walltime stays in the queue (visible as TIMEOUT) before removal.
WALLTIME_GRACE_S = 1800
#: A held pilot whose input is still being spooled has not failed; it waits.
SPOOLING_HOLD_CODE = 16
#: Marker in the RemoveReason of a pilot removed after a walltime hold.
WALLTIME_REMOVE_MARKER = "GlideinWalltimeHeld"
#: Exit code of coreutils ``timeout`` when it ended the pilot at its walltime (the wrapper).
TIMEOUT_EXIT_CODE = 124

#: The job attributes ``status`` and ``history`` ask for.
ATTRIBUTES = (
    "ClusterId,ProcId,JobStatus,GlideinTag,JobBatchName,HoldReason,HoldReasonCode,HoldReasonSubCode,"
    "QDate,EnteredCurrentStatus,ExitCode,RemoveReason,NumHolds"
)
CONSTRAINT = "GlideinTag =!= undefined"

#: HTCondor ``JobStatus`` numbers (job ClassAd attributes, HTCondor 23) and their names.
JOB_STATUS: dict[int, str] = {
    0: "Unexpanded",
    1: "Idle",
    2: "Running",
    3: "Removed",
    4: "Completed",
    5: "Held",
    6: "Transferring Output",
    7: "Suspended",
}

#: What each ``JobStatus`` name means for a pilot (refined by exit code and hold reason).
NATIVE_STATES: dict[str, PilotState] = {
    "UNEXPANDED": PilotState.QUEUED,  # very old schedds: not yet idle
    "IDLE": PilotState.QUEUED,
    "RUNNING": PilotState.RUNNING,
    "TRANSFERRING OUTPUT": PilotState.RUNNING,  # done running, output on its way back
    "HELD": PilotState.HELD,  # TIMEOUT when held at its walltime
    "SUSPENDED": PilotState.SUSPENDED,  # started, then suspended by the startd: not waiting
    "COMPLETED": PilotState.DONE,  # FAILED for a non-zero ExitCode
    "REMOVED": PilotState.CANCELLED,  # TIMEOUT when removed after a walltime hold
}

_SUBMITTED = re.compile(r"(\d+) job\(s\) submitted to cluster (\d+)\.")


def classad_string(value: str) -> str:
    """``value`` as a ClassAd string literal."""
    if "\n" in value or "\r" in value:
        raise ValueError("line break")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_job_id(stdout: str) -> str | None:
    """``1 job(s) submitted to cluster 123.`` -> ``123.0`` (a pilot is always proc 0)."""
    match = _SUBMITTED.search(stdout)
    return f"{match.group(2)}.0" if match else None


def parse_ads(text: str) -> list[dict[str, Any]]:
    """The job ads in ``condor_q -json`` / ``condor_history -json`` output (empty when none)."""
    if not text.strip():
        return []  # condor_q prints nothing at all when no job matches
    try:
        ads = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchedulerError(
            f"HTCondor printed JSON that glidein cannot read ({exc.msg} at line {exc.lineno}).",
            hint="Check `condor_q -json` by hand; the next cycle tries again.",
        ) from None
    if not isinstance(ads, list):
        raise SchedulerError("HTCondor printed JSON that is not a list of job ads.")
    return [ad for ad in ads if isinstance(ad, dict)]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def ad_state(ad: Mapping[str, Any]) -> tuple[str, PilotState | None, str]:
    """(native name, refined state or None to use the table, reason) for one job ad."""
    number = _int(ad.get("JobStatus"))
    native = JOB_STATUS.get(number, f"JobStatus {number}") if number is not None else "JobStatus undefined"
    if number == 5:
        hold = hold_info(ad)
        if hold.walltime:
            return native, PilotState.TIMEOUT, f"walltime reached: {hold.reason}"
        if hold.code == SPOOLING_HOLD_CODE:
            return native, PilotState.QUEUED, str(hold)
        return native, None, str(hold)
    if number == 4:
        code = _int(ad.get("ExitCode"))
        if code == 0:
            return native, PilotState.DONE, ""
        if code == TIMEOUT_EXIT_CODE:
            return native, PilotState.TIMEOUT, "ended at its walltime by its wrapper (exit code 124)"
        return native, PilotState.FAILED, f"exit code {code}" if code is not None else "killed by a signal"
    if number == 3:
        removed = str(ad.get("RemoveReason", ""))
        if WALLTIME_REMOVE_MARKER in removed:
            return native, PilotState.TIMEOUT, f"removed after reaching its walltime: {removed}"
        return native, PilotState.CANCELLED, removed
    return native, None, ""


def hold_info(ad: Mapping[str, Any]) -> HoldInfo:
    since = _int(ad.get("EnteredCurrentStatus"))
    return HoldInfo(
        code=_int(ad.get("HoldReasonCode")),
        subcode=_int(ad.get("HoldReasonSubCode")),
        reason=str(ad.get("HoldReason", "")),
        num_holds=_int(ad.get("NumHolds")),
        since=float(since) if since is not None else None,
    )
