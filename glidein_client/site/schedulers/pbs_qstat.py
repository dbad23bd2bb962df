"""What ``qstat`` prints, read into plain records: PBS Pro / OpenPBS JSON and Torque text.

Pure functions over text, apart from the batch backend in :mod:`.pbs` that runs the
commands: :func:`parse_qstat_json` (``qstat -f -F json -x``, PBS Professional 2022.1 and
OpenPBS 20.0 to 23.06), :func:`parse_qstat_full` (``qstat -f`` of Torque 6.1 and of Slurm's
Torque wrapper), :func:`finished_state` (how a finished job ended, from its exit status)
and :func:`detect_flavour` (which of the two answered ``qstat --version``).
"""

from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from glidein_client.site.runners.local import CommandResult
from glidein_client.site.schedulers.base import PilotState
from glidein_client.wire.errors import SchedulerError

Flavour = Literal["pro", "torque"]
FLAVOUR_NAMES: dict[str, str] = {"pro": "PBS Pro", "torque": "Torque"}


#: PBS Pro / OpenPBS ``job_state`` (Reference Guide 2022.1, "Job States").
PBS_PRO_STATES: dict[str, PilotState] = {
    "Q": PilotState.QUEUED,  # queued, eligible to run or be routed
    "T": PilotState.QUEUED,  # in transit to a new location
    "W": PilotState.QUEUED,  # waiting for its execution time (or after a failed stage-in)
    "R": PilotState.RUNNING,
    "E": PilotState.RUNNING,  # exiting after having run: still holds its nodes
    "B": PilotState.RUNNING,  # array job begun (pilots are never arrays)
    "H": PilotState.HELD,
    "S": PilotState.SUSPENDED,  # suspended after it started (preemption, qsig -s suspend)
    "U": PilotState.SUSPENDED,  # suspended because its workstation is busy
    "M": PilotState.UNKNOWN,  # moved to another server: this server no longer knows its fate
    "F": PilotState.DONE,  # finished: refined by the exit status
    "X": PilotState.DONE,  # finished subjob: refined by the exit status
}

#: Torque ``job_state`` (Torque 6.1 qstat); also what Slurm's Torque wrapper prints.
TORQUE_STATES: dict[str, PilotState] = {
    "Q": PilotState.QUEUED,
    "T": PilotState.QUEUED,
    "W": PilotState.QUEUED,
    "R": PilotState.RUNNING,
    "E": PilotState.RUNNING,  # exiting after having run
    "H": PilotState.HELD,
    "S": PilotState.SUSPENDED,  # suspended after it started
    "C": PilotState.DONE,  # completed: refined by the exit status
    "U": PilotState.UNKNOWN,  # Slurm's wrapper: a Slurm state it has no letter for
}

FINISHED_LETTERS = frozenset({"F", "X", "C"})
#: Exit statuses that mean "killed for exceeding its walltime".
WALLTIME_EXIT = {"pro": -29, "torque": -11}
#: PBS Pro history substate of a job ended by qdel (JOB_SUBSTATE_TERMINATED).
PRO_SUBSTATE_TERMINATED = 91
#: 256 + SIGTERM: how PBS reports a job that died of the signal qdel sends.
EXIT_SIGTERM = 271

_CTIME_FORMAT = "%a %b %d %H:%M:%S %Y"


def parse_walltime(value: Any) -> int | None:
    """``HH:MM:SS`` / ``MM:SS`` / seconds -> seconds; None when unreadable."""
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    parts = value.strip().split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3:
        return None
    total = 0
    for part in parts:
        total = total * 60 + int(part)
    return total


def parse_ctime(value: Any, *, utc: bool = False) -> float | None:
    """PBS time stamps (``Sun Nov 22 05:00:00 2026``, or epoch seconds) -> epoch.

    qstat writes ``ctime()`` strings in the time zone of the host it runs on; glidein runs it
    with ``TZ=UTC`` and reads them with ``utc=True``, so a login node in another zone (SSH)
    cannot shift a pilot's age by hours.
    """
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = time.strptime(value.strip(), _CTIME_FORMAT)
    except ValueError:
        return None
    return float(calendar.timegm(parsed)) if utc else time.mktime(parsed)


#: What qstat -x says on stderr when the server keeps no job history (OpenPBS pbs_messages.c,
#: msg_job_history_notset; PBSE_JOBHISTNOTSET 15140). qstat.c then still prints the JSON header
#: and exits 0.
HISTORY_OFF = "PBS is not configured to maintain job history"


def history_disabled(result: CommandResult) -> bool:
    """The answer of ``qstat -x`` on a server with ``job_history_enable`` unset."""
    return HISTORY_OFF in result.stderr


def detect_flavour(result: CommandResult) -> Flavour:
    """The flavour behind the answer to ``qstat --version``."""
    text = f"{result.stdout}\n{result.stderr}"
    if re.search(r"pbs_version\s*=", text, re.I):
        return "pro"
    return "torque"


@dataclass(frozen=True)
class QstatRecord:
    """What glidein reads of one job in ``qstat -f`` output (either flavour)."""

    batch_id: str
    name: str
    state: str
    exit_status: int | None = None
    substate: int | None = None
    qtime: float | None = None
    used_walltime_s: int | None = None
    walltime_limit_s: int | None = None
    comment: str = ""
    started: bool = False  # it has run (a start time or an execution host is known)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


#: One ``"key":value`` line of PBS's JSON whose value is not a string, object or array.
_BARE_VALUE = re.compile(r'^(?P<key>\s*"(?:[^"\\]|\\.)*":)(?P<value>[^"{\[].*?)(?P<comma>,?)[ \t]*$', re.M)
_JSON_NUMBER = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")


def _quote_bare(match: re.Match[str]) -> str:
    value = match["value"].strip()
    if _JSON_NUMBER.fullmatch(value) or value in ("true", "false", "null"):
        return match[0]
    return f"{match['key']}{json.dumps(value)}{match['comma']}"


def _load_pbs_json(text: str) -> Any:
    """PBS Pro's JSON, repaired where PBS wrote JSON that is not.

    - Some versions write invalid escapes or raw control characters.
    - OpenPBS up to 23.06 (src/lib/Libcmds/pbs_json.c, add_json_node) prints any value that
      ``strtod()`` reads whole, and that does not start with ``0`` unless below 1, as a bare
      number: a job named ``.123``, ``inf``, ``nan``, ``-05`` or ``+5``, or such a value in
      its Variable_List, makes the whole document invalid (openpbs #1255; fixed by the cJSON
      rewrite, #2603/#2604). Such values are quoted back into strings, so one other user's
      job cannot blind the site.
    """
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError:
        repaired = re.sub(r'\\(?!["\\/bfnrtu])', r"\\\\", text)
        repaired = _BARE_VALUE.sub(_quote_bare, repaired)
        return json.loads(repaired, strict=False)


def parse_qstat_json(text: str, *, utc: bool = False) -> list[QstatRecord]:
    """Jobs in the output of PBS Pro's ``qstat -f -F json [-x]``."""
    if not text.strip():
        return []
    try:
        doc = _load_pbs_json(text)
    except json.JSONDecodeError as exc:
        raise SchedulerError(
            f"qstat printed JSON that glidein cannot read ({exc.msg} at line {exc.lineno}).",
            hint="Check `qstat -f -F json -x` by hand; the next cycle tries again.",
        ) from None
    jobs = doc.get("Jobs") if isinstance(doc, dict) else None
    if not isinstance(jobs, dict):
        return []
    records = []
    for batch_id, attrs in jobs.items():
        if not isinstance(attrs, dict):
            continue
        used = attrs.get("resources_used")
        limits = attrs.get("Resource_List")
        records.append(
            QstatRecord(
                batch_id=str(batch_id),
                name=str(attrs.get("Job_Name", "")),
                state=str(attrs.get("job_state", "")),
                exit_status=_int_or_none(attrs.get("Exit_status")),
                substate=_int_or_none(attrs.get("substate")),
                qtime=parse_ctime(attrs.get("qtime"), utc=utc),
                used_walltime_s=parse_walltime(used.get("walltime")) if isinstance(used, dict) else None,
                walltime_limit_s=parse_walltime(limits.get("walltime")) if isinstance(limits, dict) else None,
                comment=str(attrs.get("comment", "")),
                started="stime" in attrs or "exec_host" in attrs,
            )
        )
    return records


_ATTR_LINE = re.compile(r"^(?P<indent> {4}|\t)(?P<key>[A-Za-z_][\w.]*) = (?P<value>.*)$")


def parse_qstat_full(text: str, *, utc: bool = False) -> list[QstatRecord]:
    """Jobs in the output of Torque's ``qstat -f`` (also PBS Pro's and Slurm's wrapper's text form).

    Each job starts with ``Job Id: <id>``; attributes follow as ``    key = value`` (Torque,
    PBS Pro) or ``<TAB>key = value`` (Slurm's wrapper, which never wraps). Torque and PBS Pro
    go on with a long value (``Variable_List``) in lines that start with a tab.
    """
    blocks: list[tuple[str, dict[str, str]]] = []
    indent = ""  # how the attributes of the current job are indented
    last_key: str | None = None
    for raw in text.splitlines():
        if raw.startswith("Job Id:"):
            blocks.append((raw[len("Job Id:") :].strip(), {}))
            indent, last_key = "", None
            continue
        if not blocks or not raw.strip():
            continue
        attrs = blocks[-1][1]
        match = _ATTR_LINE.match(raw)
        if match and indent in ("", match["indent"]):
            indent, last_key = match["indent"], match["key"]
            attrs[last_key] = match["value"].strip()
        elif last_key is not None:
            attrs[last_key] += raw.strip()
    return [
        QstatRecord(
            batch_id=batch_id,
            name=attrs.get("Job_Name", ""),
            state=attrs.get("job_state", ""),
            exit_status=_int_or_none(attrs.get("exit_status", attrs.get("Exit_status"))),
            substate=_int_or_none(attrs.get("substate")),
            qtime=parse_ctime(attrs.get("qtime"), utc=utc),
            used_walltime_s=parse_walltime(attrs.get("resources_used.walltime")),
            walltime_limit_s=parse_walltime(attrs.get("Resource_List.walltime")),
            comment=attrs.get("comment", ""),
            started=any(k in attrs for k in ("start_time", "stime", "exec_host")),
        )
        for batch_id, attrs in blocks
    ]


def finished_state(record: QstatRecord, flavour: Flavour) -> tuple[PilotState, str]:
    """The end state of a finished job (``F``/``X``/``C``) and why, from its exit status."""
    code = record.exit_status
    if code is None:
        if flavour == "pro":
            return PilotState.CANCELLED, "deleted before it ran (no exit status)"
        if not record.started:
            # Torque 6.1 (src/server/req_delete.c, execute_job_delete): qdel of a job that has
            # not run puts it in state C, kept for keep_completed seconds, without an exit status.
            return PilotState.CANCELLED, "deleted before it ran (completed without an exit status)"
        return PilotState.DONE, "ended; the batch system reports no exit status"
    if code == WALLTIME_EXIT[flavour]:
        return PilotState.TIMEOUT, f"killed at its walltime (exit status {code})"
    used, limit = record.used_walltime_s, record.walltime_limit_s
    if code >= 128 and used is not None and limit is not None and used >= limit:
        return PilotState.TIMEOUT, f"killed by a signal after its full walltime (exit status {code})"
    if flavour == "pro" and record.substate == PRO_SUBSTATE_TERMINATED:
        return PilotState.CANCELLED, f"deleted (exit status {code})"
    if code == 0:
        return PilotState.DONE, ""
    if flavour == "torque" and code == EXIT_SIGTERM:
        return PilotState.CANCELLED, f"ended by SIGTERM, as qdel sends (exit status {code})"
    if code < 0:
        return PilotState.FAILED, f"the batch system could not run it (exit status {code})"
    return PilotState.FAILED, f"exit status {code}"
