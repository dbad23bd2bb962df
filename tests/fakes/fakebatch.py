"""Fake PBS (PBS Pro 2022.1, Torque 6.1, Slurm 22.05's Torque wrapper) and HTCondor 23 commands.

The executables in ``tests/fakes/bin`` (``qsub``, ``qstat``, ``qdel``, ``condor_submit``,
``condor_q``, ``condor_rm``, ``condor_release``, ``condor_history``) call :func:`main`. They
keep their jobs in ``$FAKE_BATCH_DIR/state.json``, append every call (argv) to
``$FAKE_BATCH_DIR/calls.jsonl`` and print what the real tools print, in the formats of the
captured samples in ``tests/fakes/samples`` (same layout, key order and messages). A test
moves a job through its states by editing the state file (see ``tests/fakes/__init__.py``).

Only the Python standard library is used: the commands run under whatever ``python3`` is
first on PATH.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

PBS_VERSION = "2022.1.3"
TORQUE_VERSION = "6.1.3"
CONDOR_USER = "alice"
SUBMIT_HOST = "login01.example.org"


def state_dir() -> str:
    path = os.environ.get("FAKE_BATCH_DIR")
    if not path:
        sys.stderr.write("fake batch command: FAKE_BATCH_DIR is not set\n")
        sys.exit(99)
    return path


def new_state(flavour: str = "pro", *, history: bool = True, keep_completed: int = 300) -> dict[str, Any]:
    """A fresh batch system.

    ``history``: the PBS Pro server's ``job_history_enable`` (its default is False; most
    tests turn it on, as a site that follows the README does). ``keep_completed``: Torque's
    server attribute, seconds a completed job stays visible (0: it vanishes at once).
    """
    server = {"pro": "pbs01", "torque": "torque01.example.org", "slurm": ""}[flavour]
    return {
        "flavour": flavour,
        "history": history,
        "keep_completed": keep_completed,
        "server": server,
        "queues": {"pro": ["workq", "gpu"], "torque": ["batch", "gpu"], "slurm": ["debug"]}[flavour],
        "next_id": 1000,
        "jobs": {},
        "condor": {"next_cluster": 500, "queue": {}, "history": []},
        "lsf": {"next_id": 4000, "jobs": {}},
        "fail": {},
    }


@contextlib.contextmanager
def locked_state(directory: str) -> Iterator[dict[str, Any]]:
    """The state, locked for the duration; written back on exit."""
    path = os.path.join(directory, "state.json")
    with open(os.path.join(directory, "state.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(path) as fh:
                state = json.load(fh)
            yield state
            tmp = path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(state, fh, indent=1)
            os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ctime(epoch: float) -> str:
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(epoch))


def hms(seconds: int) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def hms_s(text: str) -> int:
    total = 0
    for part in text.split(":"):
        total = total * 60 + int(part)
    return total


class Exit(Exception):
    def __init__(self, code: int, stdout: str = "", stderr: str = "") -> None:
        super().__init__(code)
        self.code, self.stdout, self.stderr = code, stdout, stderr


# --- PBS ---------------------------------------------------------------------------------------


def _directives(script: str) -> list[list[str]]:
    """The ``#PBS`` directives before the first command line, split like words."""
    out = []
    for line in script.splitlines()[1:]:
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if stripped.startswith("#PBS"):
            out.append(re.findall(r'"[^"]*"|\S+', stripped[4:]))
    return out


def qsub(state: dict[str, Any], args: list[str]) -> str:
    flavour = state["flavour"]
    options: list[list[str]] = []
    i = 0
    while i < len(args) and args[i].startswith("-"):
        options.append(args[i : i + 2])
        i += 2
    if i != len(args) - 1:
        raise Exit(2, stderr="usage: qsub [options] script\n")
    with open(args[i]) as fh:
        script = fh.read()
    opts: dict[str, str] = {}
    resources: dict[str, str] = {}
    for words in [*_directives(script), *options]:
        if len(words) < 2 and words and words[0] != "-n":
            raise Exit(2, stderr=f"qsub: illegal {words[0]} value\n")
        flag = words[0]
        value = " ".join(words[1:]).strip('"')
        if flag == "-l":
            for part in re.split(r",(?=[a-z_]+=)", value):
                key, _, val = part.partition("=")
                resources[key] = val
        else:
            opts[flag] = value
    queue = opts.get("-q", state["queues"][0])
    if queue not in state["queues"]:
        if flavour == "pro":
            raise Exit(170, stderr="qsub: Unknown queue\n")
        if flavour == "torque":
            raise Exit(1, stderr="qsub: submit error (Unknown queue MSG=requested queue not found)\n")
        raise Exit(
            1,
            stdout=(
                "There was an error running the Slurm sbatch command.\nThe command was:\n"
                f"'/usr/bin/sbatch -o {opts.get('-o', '')} -p {queue} {args[i]} 2>&1'\n"
                f"and the output was:\n'sbatch: error: invalid partition specified: {queue}\n"
                " sbatch: error: Batch job submission failed: Invalid partition name specified\n'\n"
            ),
        )
    number = state["next_id"]
    state["next_id"] += 1
    batch_id = f"{number}.{state['server']}" if state["server"] else str(number)
    now = time.time()
    state["jobs"][batch_id] = {
        "name": opts.get("-N", os.path.basename(args[i])),
        "state": "Q",
        "substate": 10,
        "exit_status": None,
        "qtime": now,
        "stime": None,
        "queue": queue,
        "script": args[i],
        "output": opts.get("-o", ""),
        "join": opts.get("-j", "n"),
        "resources": resources,
        "used_walltime_s": 0,
        "comment": "Not Running: Insufficient amount of resource: ncpus (R: 8 A: 2 T: 64)",
        "submit_args": " ".join(args),
    }
    return batch_id + "\n"


def qstat(state: dict[str, Any], args: list[str]) -> str:
    flavour = state["flavour"]
    if args == ["--version"]:
        if flavour == "pro":
            return f"pbs_version = {PBS_VERSION}\n"
        if flavour == "torque":
            return f"Version: {TORQUE_VERSION}\nCommit: 2c51d8ca4f0b2da8f5d3c8c9a3c7ff9e5b1b9c74\n"
        raise Exit(
            2,
            stderr="Unknown option: version\nUsage:\n    qstat [-f] [-a|-i|-r] [-n [-1]] [-G|-M] "
            "[-u user_list] [-? | --help]\n    [--man] [job_id...]\n\n    qstat -Q [-f]\n\n    qstat -q\n\n",
        )
    jobs = state["jobs"]
    if flavour == "pro":
        return pro_qstat(state, args)
    if args != ["-f"]:
        raise Exit(2, stderr=f"fake qstat: unexpected arguments {args}\n")
    if flavour == "slurm":
        if not jobs:
            raise Exit(153)
        return "".join(slurm_job(batch_id, job) for batch_id, job in jobs.items())
    return "".join(torque_job(batch_id, job, state) for batch_id, job in jobs.items())


#: OpenPBS src/cmds/qstat.c (v23.06): without job_history_enable, ``qstat -x`` gets
#: PBSE_JOBHISTNOTSET (15140); prt_job_err() prints "qstat: <msg> <job id>" (the id is empty
#: for a plain listing), the JSON header is still printed, and qstat exits 0.
HISTORY_OFF_STDERR = "qstat: PBS is not configured to maintain job history \n"
_BARE = "\u0000bare:"
#: What strtod() reads whole (OpenPBS src/lib/Libcmds/pbs_json.c v23.06, add_json_node):
#: decimal and hex numbers with optional sign, inf/infinity, nan.
_STRTOD = re.compile(
    r"\s*[+-]?(\d+\.?\d*([eE][+-]?\d+)?|\.\d+([eE][+-]?\d+)?|0[xX][0-9a-fA-F]+|inf(inity)?|nan)\s*", re.I
)


def pbs_json_value(value: Any) -> Any:
    """A string value as OpenPBS up to 23.06 prints it: bare when strtod() reads all of it and it
    does not start with "0" unless below 1 (pbs_json.c add_json_node; openpbs #1255)."""
    if not isinstance(value, str) or not _STRTOD.fullmatch(value) or not value.strip():
        return value
    try:
        number = float(int(value, 16)) if value.strip().lower().lstrip("+-").startswith("0x") else float(value)
    except ValueError:
        return value
    if value.startswith("0") and not number < 1:
        return value
    return _BARE + value


def _bare_values(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _bare_values(v) for k, v in obj.items()}
    return pbs_json_value(obj)


def pro_qstat(state: dict[str, Any], args: list[str]) -> tuple[str, str, int]:
    """``qstat -f -F json [-x]`` of PBS Pro 2022.1 / OpenPBS 23.06."""
    if args not in (["-f", "-F", "json", "-x"], ["-f", "-F", "json"]):
        raise Exit(2, stderr=f"fake qstat: unexpected arguments {args}\n")
    doc: dict[str, Any] = {"timestamp": int(time.time()), "pbs_version": PBS_VERSION, "pbs_server": state["server"]}
    history = "-x" in args
    if history and not state["history"]:
        return json.dumps(doc, indent=4, separators=(",", ":")) + "\n", HISTORY_OFF_STDERR, 0
    jobs = {i: j for i, j in state["jobs"].items() if history or j["state"] not in ("F", "X")}
    if jobs:
        doc["Jobs"] = {batch_id: _bare_values(pro_job(batch_id, job, state)) for batch_id, job in jobs.items()}
    text = json.dumps(doc, indent=4, separators=(",", ":"))
    text = re.sub(r'"\\u0000bare:((?:[^"\\]|\\.)*)"', lambda m: json.loads(f'"{m[1]}"'), text)
    return text + "\n", "", 0


def _walltime(job: dict[str, Any]) -> str:
    return str(job["resources"].get("walltime", "01:00:00"))


def _chunk(job: dict[str, Any], key: str, default: str) -> str:
    """A resource of the job's PBS Pro select chunk (``1:ncpus=4:mem=4096mb``)."""
    for part in job["resources"].get("select", "").split(":"):
        name, _, value = part.partition("=")
        if name == key:
            return str(value)
    return default


def pro_job(batch_id: str, job: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """One job as PBS Pro 2022.1 ``qstat -f -F json -x`` prints it (key order as in the sample)."""
    server, ran = state["server"], job["stime"] is not None
    out: dict[str, Any] = {"Job_Name": job["name"], "Job_Owner": f"{CONDOR_USER}@{SUBMIT_HOST}"}
    if ran:
        out["resources_used"] = {
            "cpupercent": 98,
            "cput": hms(job["used_walltime_s"]),
            "mem": "51200kb",
            "ncpus": 4,
            "vmem": "412500kb",
            "walltime": hms(job["used_walltime_s"]),
        }
    out.update(
        {
            "job_state": job["state"],
            "queue": job["queue"],
            "server": server,
            "Checkpoint": "u",
            "ctime": ctime(job["qtime"]),
            "Error_Path": f"{SUBMIT_HOST}:{job['output']}",
        }
    )
    if ran:
        out.update({"exec_host": "node01/0*4", "exec_vnode": "(node01:ncpus=4:mem=4194304kb)"})
    out.update(
        {
            "Hold_Types": "u" if job["state"] == "H" else "n",
            "Join_Path": job["join"],
            "Keep_Files": "n",
            "Mail_Points": "a",
            "mtime": ctime(job["qtime"]),
            "Output_Path": f"{SUBMIT_HOST}:{job['output']}",
            "Priority": 0,
            "qtime": ctime(job["qtime"]),
            "Rerunable": "True",
            "Resource_List": {
                "mem": _chunk(job, "mem", "4096mb"),
                "ncpus": int(_chunk(job, "ncpus", "4")),
                "nodect": 1,
                "place": "pack",
                "select": job["resources"].get("select", "1:ncpus=4"),
                "walltime": _walltime(job),
            },
        }
    )
    if ran:
        out.update({"stime": ctime(job["stime"]), "session_id": 48211, "jobdir": f"/home/{CONDOR_USER}"})
    out["substate"] = job["substate"]
    out["Variable_List"] = {
        "PBS_O_HOME": f"/home/{CONDOR_USER}",
        "PBS_O_LANG": "en_US.UTF-8",
        "PBS_O_LOGNAME": CONDOR_USER,
        "PBS_O_PATH": "/usr/local/bin:/usr/bin:/bin",
        "PBS_O_MAIL": f"/var/spool/mail/{CONDOR_USER}",
        "PBS_O_SHELL": "/bin/bash",
        "PBS_O_WORKDIR": f"/home/{CONDOR_USER}",
        "PBS_O_SYSTEM": "Linux",
        "PBS_O_QUEUE": job["queue"],
        "PBS_O_HOST": SUBMIT_HOST,
    }
    out["comment"] = job["comment"]
    out["etime"] = ctime(job["qtime"])
    if ran:
        out["run_count"] = 1
    if job["exit_status"] is not None:
        out["Exit_status"] = job["exit_status"]
    out["Submit_arguments"] = job["submit_args"]
    if job["state"] == "F":
        out["history_timestamp"] = int(time.time())
    out["project"] = "_pbs_project_default"
    return out


def torque_job(batch_id: str, job: dict[str, Any], state: dict[str, Any]) -> str:
    """One job as Torque 6.1 ``qstat -f`` prints it (long values wrapped with a tab)."""
    ran, server = job["stime"] is not None, state["server"]
    lines = [f"Job Id: {batch_id}", f"Job_Name = {job['name']}", f"Job_Owner = {CONDOR_USER}@{SUBMIT_HOST}"]
    if ran:
        lines += [
            f"resources_used.cput = {hms(job['used_walltime_s'])}",
            "resources_used.energy_used = 0",
            "resources_used.mem = 51200kb",
            "resources_used.vmem = 412500kb",
            f"resources_used.walltime = {hms(job['used_walltime_s'])}",
        ]
    lines += [
        f"job_state = {job['state']}",
        f"queue = {job['queue']}",
        f"server = {server}",
        "Checkpoint = u",
        f"ctime = {ctime(job['qtime'])}",
        f"Error_Path = {SUBMIT_HOST}:{job['output']}",
    ]
    if ran:
        lines.append("exec_host = node01.example.org/0-3")
    lines += [
        f"Hold_Types = {'u' if job['state'] == 'H' else 'n'}",
        f"Join_Path = {job['join']}",
        "Keep_Files = n",
        "Mail_Points = a",
        f"mtime = {ctime(job['qtime'])}",
        f"Output_Path = {SUBMIT_HOST}:{job['output']}",
        "Priority = 0",
        f"qtime = {ctime(job['qtime'])}",
        "Rerunable = True",
        f"Resource_List.mem = {job['resources'].get('mem', '4096mb')}",
        "Resource_List.nodect = 1",
        f"Resource_List.nodes = {job['resources'].get('nodes', '1:ppn=4')}",
        f"Resource_List.walltime = {_walltime(job)}",
    ]
    if ran:
        lines.append("session_id = 48211")
    lines += [
        "Shell_Path_List = /bin/bash",
        f"euser = {CONDOR_USER}",
        f"egroup = {CONDOR_USER}",
        "queue_type = E",
        f"Variable_List = PBS_O_QUEUE={job['queue']},PBS_O_HOME=/home/{CONDOR_USER},\n"
        f"\tPBS_O_LOGNAME={CONDOR_USER},PBS_O_PATH=/usr/local/bin:/usr/bin:/bin,\n"
        f"\tPBS_O_MAIL=/var/spool/mail/{CONDOR_USER},PBS_O_SHELL=/bin/bash,\n"
        f"\tPBS_O_LANG=en_US.UTF-8,PBS_O_WORKDIR=/home/{CONDOR_USER},\n"
        f"\tPBS_O_HOST={SUBMIT_HOST},PBS_O_SERVER={server}",
        f"etime = {ctime(job['qtime'])}",
    ]
    if job["exit_status"] is not None:
        lines.append(f"exit_status = {job['exit_status']}")
    lines.append(f"submit_args = {job['submit_args']}")
    if ran:
        lines += [f"start_time = {ctime(job['stime'])}", "start_count = 1"]
    if job["state"] == "C":
        lines += [
            f"comp_time = {ctime(job['stime'] or job['qtime'])}",
            f"total_runtime = {job['used_walltime_s']}.214133",
        ]
    lines += [
        "fault_tolerant = False",
        "job_radix = 0",
        f"submit_host = {SUBMIT_HOST}",
        f"init_work_dir = /home/{CONDOR_USER}",
        "request_version = 1",
    ]
    return lines[0] + "\n" + "".join(f"    {line}\n" for line in lines[1:]) + "\n"


def slurm_job(batch_id: str, job: dict[str, Any]) -> str:
    """One job as Slurm 22.05's Torque wrapper ``qstat -f`` prints it (tabs, no exit status)."""
    lines = [
        f"Job Id:\t{batch_id}",
        f"\tJob_Name = {job['name']}",
        "\tJob_Owner = root@localhost",
        f"\tjob_state = {job['state']}",
        f"\tqueue = {job['queue']}",
        f"\tqtime = {ctime(job['qtime'])}",
    ]
    if job["stime"] is not None:
        lines += [
            f"\tmtime = {ctime(job['stime'])}",
            f"\tctime = {ctime(job['stime'] + 60)}",
            "\texec_host = localhost/1",
        ]
    lines += [
        "\tPriority = 4294901759",
        "\teuser = root(0)",
        "\tegroup = root(0)",
        f"\tResource_List.walltime = {_walltime(job)}",
        "\tResource_List.nodect = 1",
        "\tResource_List.ncpus = 1",
    ]
    return "\n".join(lines) + "\n\n"


def qdel(state: dict[str, Any], args: list[str]) -> tuple[str, str, int]:
    flavour, jobs = state["flavour"], state["jobs"]
    errors, rc = [], 0
    for batch_id in args:
        job = jobs.get(batch_id)
        if job is None:
            rc = 1
            if flavour == "pro":
                errors.append(f"qdel: Unknown Job Id {batch_id}")
            elif flavour == "torque":
                errors.append(f"qdel: Unknown Job Id Error {batch_id}")
            continue
        if job["state"] in ("F", "C"):
            rc = 1
            if flavour == "pro":
                errors.append(f"qdel: Job {batch_id} has finished")
            elif flavour == "torque":
                errors.append(f"qdel: Request invalid for state of job MSG=invalid state for job - COMPLETE {batch_id}")
            continue
        ran = job["stime"] is not None
        if flavour == "pro":
            if not state["history"]:
                del jobs[batch_id]  # no job history: a deleted job is gone at once
                continue
            job.update(state="F", substate=91, exit_status=271 if ran else None)
        elif flavour == "torque":
            if not ran:
                # Torque 6.1 src/server/req_delete.c, execute_job_delete(): a job that has not run
                # goes to COMPLETE, without an exit status, for keep_completed seconds.
                if not state["keep_completed"]:
                    del jobs[batch_id]
                else:
                    job.update(state="C", substate=59)
                continue
            job.update(state="C", exit_status=271)
        else:
            job.update(state="C")
    return "", "".join(e + "\n" for e in errors), rc


# --- HTCondor ----------------------------------------------------------------------------------

ALL_ATTRS = (
    "ClusterId",
    "ProcId",
    "JobStatus",
    "GlideinTag",
    "JobBatchName",
    "HoldReason",
    "HoldReasonCode",
    "HoldReasonSubCode",
    "QDate",
    "EnteredCurrentStatus",
    "ExitCode",
    "RemoveReason",
    "NumHolds",
)


def condor_json(ads: list[dict[str, Any]], attributes: list[str]) -> str:
    """Job ads as HTCondor 23 ``-json`` prints them: only defined attributes, sorted."""
    if not ads:
        return ""  # condor_q and condor_history print nothing when no job matches
    chunks = []
    for ad in ads:
        shown = {k: ad[k] for k in sorted(attributes, key=str.lower) if ad.get(k) is not None}
        body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in shown.items())
        chunks.append("{\n" + body + "\n}")
    return "[\n" + "\n,\n".join(chunks) + "\n]\n"


def _submit_description(text: str) -> dict[str, str]:
    commands: dict[str, str] = {}
    queued = False
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if re.fullmatch(r"queue(\s+\d+)?", stripped, re.I):
            queued = True
            continue
        key, eq, value = stripped.partition("=")
        if not eq or not key.strip():
            raise Exit(1, stderr=f"\nERROR: on Line {number} of submit file: \nsubmit: unknown command {stripped!r}\n")
        commands[key.strip().lower()] = value.strip()
    if not queued:
        raise Exit(1, stderr="\nERROR: no 'queue' statement in the submit file\n")
    return commands


#: Submit commands condor_submit knows (a subset of HTCondor 24's submit keywords: those glidein
#: writes and the common ones a site adds). Any other ``key = value`` line draws the warning
#: below and is otherwise ignored (submit_utils.cpp, warn_unused: "the line '%s = %s' was unused
#: by %s. Is it a typo?"); ``+Attr`` and ``MY.Attr`` lines set job attributes.
SUBMIT_KEYWORDS = frozenset(
    """universe executable arguments initialdir output error log batch_name request_cpus request_memory
    request_disk request_gpus should_transfer_files when_to_transfer_output transfer_input_files
    transfer_output_files transfer_executable allowed_execute_duration allowed_job_duration periodic_remove
    periodic_hold periodic_release requirements rank accounting_group accounting_group_user environment
    getenv notification priority max_retries on_exit_hold on_exit_remove job_max_vacate_time""".split()
)
_SHOULD = {"YES", "NO", "IF_NEEDED"}
_WHEN = {"ON_EXIT", "ON_EXIT_OR_EVICT", "ON_SUCCESS", "NEVER"}


def print_wrapped_text(text: str, chars_per_line: int = 78) -> str:
    """HTCondor's print_wrapped_text() (src/condor_utils/print_wrapped_text.cpp), for stderr."""
    out, count = "", 0
    for token in re.split(r"[ \t]+", text):
        if not token:
            continue
        if len(token) < chars_per_line - count:
            out += token
            count += len(token)
        else:
            out += "\n" + token
            count = len(token)
        if count < chars_per_line:
            out += " "
            count += 1
        else:
            out += "\n"
            count = 0
    return out + "\n"


def check_transfer_settings(commands: dict[str, str]) -> None:
    """condor_submit's file-transfer validation (HTCondor 9.0 to 24.x, submit_utils.cpp
    SubmitHash::SetTransferFiles, the checks marked (A) to (F) there), with its messages."""
    should, when = commands.get("should_transfer_files"), commands.get("when_to_transfer_output")
    default_should, default_when = should is None, when is None
    should = (should or "IF_NEEDED").upper()
    when = (when or "ON_EXIT").upper()
    if should not in _SHOULD:  # (A)
        raise Exit(
            1,
            stderr=print_wrapped_text(
                f"\nERROR: invalid value ({commands['should_transfer_files']}) for ShouldTransferFiles.  Please either "
                "specify YES, NO, or IF_NEEDED and try again."
            ),
        )
    files = [k for k in ("transfer_input_files", "transfer_output_files") if k in commands]
    if should == "NO" and files:  # (F)
        what = '" and "'.join(files)
        raise Exit(
            1,
            stderr=print_wrapped_text(
                f'\nERROR: you specified files you want Condor to transfer via "{what}", but you disabled '
                "should_transfer_files."
            ),
        )
    if when not in _WHEN:  # (B)
        raise Exit(
            1,
            stderr=print_wrapped_text(
                f"\nERROR: invalid value ({commands['when_to_transfer_output']}) for WhenToTransferOutput.  Please "
                "either specify ON_EXIT, or ON_EXIT_OR_EVICT and try again."
            ),
        )
    if not default_should and default_when and should == "NO":
        when = "NEVER"
    if (should == "NO") != (when == "NEVER"):  # (C), (D)
        raise Exit(
            1,
            stderr=print_wrapped_text(
                f"\nERROR: WhenToTransferOutput specified as {when} yet ShouldTransferFiles defined as {should}.  "
                "Please remove this contradiction from your submit file and try again."
            ),
        )
    if default_should and when == "ON_EXIT_OR_EVICT":
        should = "YES"
    if when == "ON_EXIT_OR_EVICT" and should == "IF_NEEDED":  # (E)
        raise Exit(
            1,
            stderr=print_wrapped_text(
                '\nERROR: "when_to_transfer_output = ON_EXIT_OR_EVICT" and "should_transfer_files = IF_NEEDED" are '
                "incompatible.  The behavior of these two settings together would produce incorrect file access in "
                "some cases.  Please decide which one of those two settings you're more interested in. If you really "
                'want "IF_NEEDED", set "when_to_transfer_output = ON_EXIT".  If you really want "ON_EXIT_OR_EVICT", '
                'please set "should_transfer_files = YES".  After you have corrected this incompatibility, please try '
                "running condor_submit again.\n"
            ),
        )


def condor_submit(state: dict[str, Any], args: list[str]) -> tuple[str, str, int]:
    if len(args) != 1:
        raise Exit(1, stderr="Usage: condor_submit [options] [submit-file]\n")
    with open(args[0]) as fh:
        commands = _submit_description(fh.read())
    if "executable" not in commands:
        raise Exit(1, stderr="\nERROR: Executable file  does not exist\n")
    requirements = commands.get("requirements", "")
    if requirements.count("(") != requirements.count(")"):
        raise Exit(
            1,
            stderr=f"\nERROR: Parse error in expression: \n\t{requirements}\n\t^^^\n"
            "ERROR: Failed to parse Requirements expression\n",
        )
    check_transfer_settings(commands)
    initialdir = commands.get("initialdir", os.getcwd())
    for name in filter(None, (f.strip() for f in commands.get("transfer_input_files", "").split(","))):
        path = os.path.join(initialdir, name)
        if not os.path.exists(path):  # submit_utils.cpp check_open: input files must exist
            raise Exit(1, stderr=f'\nERROR: Can\'t open "{path}"  with flags 00 (No such file or directory)\n')
    warnings = "".join(
        f"\nWARNING: the line '{key} = {value}' was unused by condor_submit. Is it a typo?\n"
        for key, value in commands.items()
        if key not in SUBMIT_KEYWORDS and not key.startswith(("+", "my."))
    )
    condor = state["condor"]
    rule = condor.get("submit_requirement")  # (name, reason or None): SUBMIT_REQUIREMENT_<name> refuses
    if rule is not None:
        name, reason = rule
        # submit.cpp: the schedd's refusal comes after this line; schedd.cpp: the admin's
        # SUBMIT_REQUIREMENT_<name>_REASON replaces "Submit requirement <name> not met."
        text = reason if reason else f"Submit requirement {name} not met."
        return "Submitting job(s)", f"\nERROR: Failed to commit job submission into the queue.\nERROR: {text}\n\n", 1
    cluster = condor["next_cluster"]
    condor["next_cluster"] += 1
    now = int(time.time())
    tag = commands.get("+glideintag", "").strip('"')
    condor["queue"][f"{cluster}.0"] = {
        "ClusterId": cluster,
        "ProcId": 0,
        "JobStatus": 1,
        "GlideinTag": tag or None,
        "JobBatchName": commands.get("batch_name"),
        "QDate": now,
        "EnteredCurrentStatus": now,
        "commands": commands,
    }
    return f"Submitting job(s).\n1 job(s) submitted to cluster {cluster}.\n", warnings, 0


def _expect_query(args: list[str], extra: int = 0) -> tuple[list[str], str]:
    if len(args) != 5 + extra or args[0] != "-json" or args[1] != "-attributes" or args[3] != "-constraint":
        raise Exit(1, stderr=f"fake condor tool: unexpected arguments {args}\n")
    return args[2].split(","), args[4]


def condor_q(state: dict[str, Any], args: list[str]) -> str:
    attributes, constraint = _expect_query(args)
    if constraint != "GlideinTag =!= undefined":
        raise Exit(1, stderr=f"fake condor_q: unexpected constraint {constraint!r}\n")
    ads = [ad for ad in state["condor"]["queue"].values() if ad.get("GlideinTag") is not None]
    return condor_json(ads, attributes)


def condor_history(state: dict[str, Any], args: list[str]) -> str:
    attributes, constraint = _expect_query(args, extra=2)
    if args[5] != "-limit":
        raise Exit(1, stderr=f"fake condor_history: unexpected arguments {args}\n")
    wanted = {(int(c), int(p)) for c, p in re.findall(r"ClusterId == (\d+) && ProcId == (\d+)", constraint)}
    ads = [ad for ad in reversed(state["condor"]["history"]) if (ad["ClusterId"], ad["ProcId"]) in wanted]
    return condor_json(ads[: int(args[6])], attributes)


def condor_rm(state: dict[str, Any], args: list[str]) -> tuple[str, str, int]:
    condor, out, err, rc = state["condor"], [], [], 0
    for job_id in args:
        ad = condor["queue"].pop(job_id, None)
        if ad is None:
            err.append(f"Job {job_id} not found")
            rc = 1
            continue
        ad.update(
            JobStatus=3, EnteredCurrentStatus=int(time.time()), RemoveReason=f"via condor_rm (by user {CONDOR_USER})"
        )
        condor["history"].append(ad)
        out.append(f"Job {job_id} marked for removal")
    return "".join(o + "\n" for o in out), "".join(e + "\n" for e in err), rc


def condor_release(state: dict[str, Any], args: list[str]) -> tuple[str, str, int]:
    queue, out, err, rc = state["condor"]["queue"], [], [], 0
    for job_id in args:
        ad = queue.get(job_id)
        if ad is None:
            err.append(f"Job {job_id} not found")
            rc = 1
        elif ad["JobStatus"] != 5:
            err.append(f"Job {job_id} not held to be released")
            rc = 1
        elif job_id in state["condor"].get("release_spent", []):
            # dc_schedd.cpp (HTCondor 23+): a job released SYSTEM_PERIODIC_RELEASES times stays held.
            err.append(f"Job {job_id} cannot be released again, has reached SYSTEM_PERIODIC_RELEASES limit")
            rc = 1
        else:
            ad.update(
                JobStatus=1,
                EnteredCurrentStatus=int(time.time()),
                HoldReason=None,
                HoldReasonCode=None,
                HoldReasonSubCode=None,
            )
            out.append(f"Job {job_id} released")
    return "".join(o + "\n" for o in out), "".join(e + "\n" for e in err), rc


# --- entry point -------------------------------------------------------------------------------

COMMANDS = {
    "qsub": qsub,
    "qstat": qstat,
    "qdel": qdel,
    "condor_submit": condor_submit,
    "condor_q": condor_q,
    "condor_history": condor_history,
    "condor_rm": condor_rm,
    "condor_release": condor_release,
}


def main(command: str, args: list[str], commands: dict[str, Any] | None = None) -> int:
    directory = state_dir()
    with open(os.path.join(directory, "calls.jsonl"), "a") as log:
        log.write(json.dumps({"command": command, "args": args}) + "\n")
    with locked_state(directory) as state:
        failure = state["fail"].pop(command, None)
        if failure is not None:
            sys.stdout.write(failure.get("stdout", ""))
            sys.stderr.write(failure.get("stderr", ""))
            return int(failure.get("rc", 1))
        try:
            result = (commands or COMMANDS)[command](state, args)
        except Exit as exc:
            sys.stdout.write(exc.stdout)
            sys.stderr.write(exc.stderr)
            return exc.code
    if isinstance(result, tuple):
        stdout, stderr, rc = result
    else:
        stdout, stderr, rc = str(result), "", 0
    sys.stdout.write(str(stdout))
    sys.stderr.write(str(stderr))
    return int(rc)
