"""Fake IBM Spectrum LSF 10.1 commands: ``bsub``, ``bjobs``, ``bkill``.

Same machinery as :mod:`fakebatch` (state in ``$FAKE_BATCH_DIR/state.json`` under ``lsf``,
argv logged to ``calls.jsonl``). The outputs follow LSF 10.1's formats:

- ``bsub < script`` reads ``#BSUB`` lines up to the first command line and prints
  ``Job <N> is submitted to queue <Q>.`` (``default queue`` when ``-q`` was not given).
  A refusal is the ``lsb_errmsg`` text followed by ``. Job not submitted.`` on stderr, exit
  255 (the texts are LSF's ``lsb_errmsg[]`` table, e.g. LSBE_BAD_QUEUE "No such queue",
  LSBE_PROC_NUM "Too many processors requested", LSBE_OVER_LIMIT "Cannot exceed queue's
  hard limit(s)"; the queue name prefixes LSBE_BAD_QUEUE, as bsub does).
- ``bjobs -a -json -o "<fields>" -J <name>``: ``{"COMMAND":"bjobs","JOBS":N,"RECORDS":[...]}``
  with 2-space indent, ``"KEY":"value"`` (every value a string, empty when unset) and
  fields upper-cased in the order asked; no match: ``Job <name> is not found`` on stderr,
  exit 255. Times are ``Mon DD HH:MM`` in local time.
- ``bkill``: ``Job <N> is being terminated`` per job; ``Job <N>: No matching job found`` or
  ``Job <N>: Job has already finished`` on stderr (exit 255). A killed job ends in EXIT with
  ``TERM_OWNER: job killed by owner``.
"""

from __future__ import annotations

import fnmatch
import re
import sys
import time
from typing import Any

from fakebatch import Exit

QUEUES = ("normal", "short", "gpu")
DEFAULT_QUEUE = "normal"
MAX_SLOTS = 64  # the largest host
QUEUE_RUNLIMIT_MIN = 72 * 60  # RUNLIMIT of every queue, minutes
FIELDS = ("jobid", "stat", "job_name", "submit_time", "exit_code", "exit_reason", "pend_reason")
OPTIONS_WITH_VALUE = frozenset({"-J", "-cwd", "-o", "-e", "-W", "-n", "-R", "-M", "-gpu", "-q", "-P"})
OPTIONS_BARE = frozenset({"-x"})


def lsf_state(state: dict[str, Any]) -> dict[str, Any]:
    return state.setdefault("lsf", {"next_id": 4000, "jobs": {}})


def _bsub_lines(script: str) -> list[list[str]]:
    """``#BSUB`` lines before the first command line (bsub stops reading there)."""
    out = []
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if stripped.startswith("#BSUB"):
            out.append(re.findall(r'"[^"]*"|\S+', stripped[5:]))
    return out


def _refuse(text: str) -> Exit:
    return Exit(255, stderr=f"{text}. Job not submitted.\n")


def bsub(state: dict[str, Any], args: list[str]) -> str:
    if args:
        raise Exit(255, stderr="fake bsub: glidein submits the script on stdin only\n")
    options: dict[str, list[str]] = {}
    for words in _bsub_lines(sys.stdin.read()):
        flag, values = words[0], [w.strip('"') for w in words[1:]]
        if flag in OPTIONS_BARE and not values:
            options.setdefault(flag, [])
        elif flag in OPTIONS_WITH_VALUE and len(values) == 1:
            options.setdefault(flag, []).append(values[0])
        else:
            raise Exit(255, stderr=f"bsub: illegal option -- {flag.lstrip('-')}\nUsage: bsub [options] command\n")
    queue = options.get("-q", [DEFAULT_QUEUE])[-1]
    if queue not in QUEUES:
        raise _refuse(f"{queue}: No such queue")
    slots = int(options.get("-n", ["1"])[-1])
    if slots > MAX_SLOTS:
        raise _refuse("Too many processors requested")
    limit = options.get("-W", ["60"])[-1]
    if not re.fullmatch(r"(\d+:)?\d+", limit):
        raise _refuse("Bad time specification")
    minutes = sum(int(p) * m for p, m in zip(reversed(limit.split(":")), (1, 60), strict=False))
    if minutes > QUEUE_RUNLIMIT_MIN:
        raise _refuse("Cannot exceed queue's hard limit(s)")
    for req in options.get("-R", []):
        if req.count("[") != req.count("]"):
            raise _refuse("Bad resource requirement syntax")
    lsf = lsf_state(state)
    number = lsf["next_id"]
    lsf["next_id"] += 1
    lsf["jobs"][str(number)] = {
        "name": options.get("-J", ["NONAME"])[-1],
        "stat": "PEND",
        "submit_time": time.time(),
        "exit_code": "",
        "exit_reason": "",
        "pend_reason": "New job is waiting for scheduling;",
        "queue": queue,
        "options": options,
    }
    where = f"queue <{queue}>" if "-q" in options else f"default queue <{queue}>"
    return f"Job <{number}> is submitted to {where}.\n"


def _record(job_id: str, job: dict[str, Any]) -> dict[str, str]:
    values = {
        "jobid": job_id,
        "stat": job["stat"],
        "job_name": job["name"],
        "submit_time": time.strftime("%b %d %H:%M", time.localtime(job["submit_time"])),
        "exit_code": str(job["exit_code"]),
        "exit_reason": job["exit_reason"],
        "pend_reason": job["pend_reason"] if job["stat"] in ("PEND", "PSUSP") else "",
    }
    return {field.upper(): values[field] for field in FIELDS}


def bjobs(state: dict[str, Any], args: list[str]) -> str:
    if len(args) != 6 or args[:4] != ["-a", "-json", "-o", " ".join(FIELDS)] or args[4] != "-J":
        raise Exit(255, stderr=f"fake bjobs: unexpected arguments {args}\n")
    pattern = args[5]
    jobs = [(i, j) for i, j in lsf_state(state)["jobs"].items() if fnmatch.fnmatchcase(j["name"], pattern)]
    if not jobs:
        raise Exit(255, stderr=f"Job <{pattern}> is not found\n")
    records = []
    for job_id, job in jobs:
        body = ",\n".join(f'      "{k}":"{v}"' for k, v in _record(job_id, job).items())
        records.append("    {\n" + body + "\n    }")
    return (
        '{\n  "COMMAND":"bjobs",\n  "JOBS":'
        + str(len(jobs))
        + ',\n  "RECORDS":[\n'
        + ",\n".join(records)
        + "\n  ]\n}\n"
    )


def bkill(state: dict[str, Any], args: list[str]) -> tuple[str, str, int]:
    jobs, out, err, rc = lsf_state(state)["jobs"], [], [], 0
    for job_id in args:
        job = jobs.get(job_id)
        if job is None:
            err.append(f"Job <{job_id}>: No matching job found")
            rc = 255
        elif job["stat"] in ("DONE", "EXIT"):
            err.append(f"Job <{job_id}>: Job has already finished")
            rc = 255
        else:
            job.update(
                stat="EXIT",
                exit_reason="TERM_OWNER: job killed by owner",
                exit_code="" if job["stat"] == "PEND" else "130",
            )
            out.append(f"Job <{job_id}> is being terminated")
    return "".join(o + "\n" for o in out), "".join(e + "\n" for e in err), rc


COMMANDS = {"bsub": bsub, "bjobs": bjobs, "bkill": bkill}
