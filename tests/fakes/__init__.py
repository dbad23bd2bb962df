"""Fake batch systems for tests: PBS Pro, Torque, Slurm's Torque wrapper, HTCondor and LSF commands.

:class:`FakeBatch` owns a state directory; :attr:`FakeBatch.env` puts the fake commands of
``tests/fakes/bin`` first on PATH, so a backend driven through the real ``LocalRunner`` with
that ``env`` talks to them. The test moves jobs through their states with the methods here.
Captured outputs of the real tools (the formats the fakes reproduce) are in ``samples/``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from . import fakebatch

FAKES = Path(__file__).resolve().parent
BIN = FAKES / "bin"
SAMPLES = FAKES / "samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


class FakeBatch:
    """State of one fake batch system (``flavour``: ``pro``, ``torque`` or ``slurm``; HTCondor always)."""

    def __init__(
        self, directory: Path, flavour: str = "pro", *, history: bool = True, keep_completed: int = 300, tz: str = ""
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tz = tz  # the time zone of the batch system's host ("" for this host's)
        state = fakebatch.new_state(flavour, history=history, keep_completed=keep_completed)
        (self.dir / "state.json").write_text(json.dumps(state))

    @property
    def env(self) -> dict[str, str]:
        env = {
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "FAKE_BATCH_DIR": str(self.dir),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if self.tz:
            env["TZ"] = self.tz  # the login node's own zone, as a remote shell would have it
        return env

    # --- inspection ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.dir / "state.json").read_text())
        return data

    def calls(self, command: str | None = None) -> list[list[str]]:
        path = self.dir / "calls.jsonl"
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines()]
        return [[e["command"], *e["args"]] for e in entries if command is None or e["command"] == command]

    def job(self, batch_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.state()["jobs"][batch_id]
        return job

    # --- PBS -----------------------------------------------------------------------------------

    def fail_next(self, command: str, *, rc: int = 1, stdout: str = "", stderr: str = "") -> None:
        """The next call of ``command`` prints this and exits with ``rc``."""
        with fakebatch.locked_state(str(self.dir)) as state:
            state["fail"][command] = {"rc": rc, "stdout": stdout, "stderr": stderr}

    def update_job(self, batch_id: str, **fields: Any) -> None:
        with fakebatch.locked_state(str(self.dir)) as state:
            state["jobs"][batch_id].update(fields)

    def add_job(self, batch_id: str, name: str, **fields: Any) -> None:
        """A job that the backend did not submit (another user's, another site's)."""
        job = {
            "name": name,
            "state": "R",
            "substate": 42,
            "exit_status": None,
            "qtime": time.time() - 600,
            "stime": time.time() - 300,
            "queue": "workq",
            "script": "/home/bob/run.sh",
            "output": "/home/bob/out",
            "join": "n",
            "resources": {},
            "used_walltime_s": 300,
            "comment": "",
            "submit_args": "run.sh",
        }
        job.update(fields)
        with fakebatch.locked_state(str(self.dir)) as state:
            state["jobs"][batch_id] = job

    def start(self, batch_id: str) -> None:
        self.update_job(
            batch_id,
            state="R",
            substate=42,
            stime=time.time(),
            used_walltime_s=5,
            comment="Job run at Sun Nov 22 at 05:00 on (node01:ncpus=4:mem=4194304kb)",
        )

    def finish(self, batch_id: str, exit_status: int | None, *, used_walltime_s: int = 120) -> None:
        """The job ends: PBS Pro history (F, substate 92) or Torque/Slurm completed (C)."""
        flavour = self.state()["flavour"]
        letter = "F" if flavour == "pro" else "C"
        self.update_job(
            batch_id,
            state=letter,
            substate=92,
            exit_status=exit_status,
            used_walltime_s=used_walltime_s,
            comment="Job run at Sun Nov 22 at 05:00 on (node01:ncpus=4:mem=4194304kb) and finished",
        )

    # --- HTCondor --------------------------------------------------------------------------------

    def condor_ad(self, job_id: str) -> dict[str, Any]:
        ad: dict[str, Any] = self.state()["condor"]["queue"][job_id]
        return ad

    def condor_update(self, job_id: str, **attrs: Any) -> None:
        with fakebatch.locked_state(str(self.dir)) as state:
            state["condor"]["queue"][job_id].update(attrs, EnteredCurrentStatus=int(time.time()))

    def condor_hold(self, job_id: str, code: int, reason: str, subcode: int = 0) -> None:
        self.condor_update(job_id, JobStatus=5, HoldReasonCode=code, HoldReasonSubCode=subcode, HoldReason=reason)

    def condor_leave(self, job_id: str, **attrs: Any) -> None:
        """The job leaves the queue (completed or removed) into the history."""
        with fakebatch.locked_state(str(self.dir)) as state:
            ad = state["condor"]["queue"].pop(job_id)
            ad.update(attrs, EnteredCurrentStatus=int(time.time()))
            state["condor"]["history"].append(ad)

    def condor_add(self, job_id: str, **attrs: Any) -> None:
        cluster, proc = (int(x) for x in job_id.split("."))
        now = int(time.time())
        ad = {"ClusterId": cluster, "ProcId": proc, "JobStatus": 2, "QDate": now - 60, "EnteredCurrentStatus": now}
        ad.update(attrs)
        with fakebatch.locked_state(str(self.dir)) as state:
            state["condor"]["queue"][job_id] = ad

    # --- LSF -------------------------------------------------------------------------------------

    def lsf_job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self.state()["lsf"]["jobs"][job_id]
        return job

    def lsf_update(self, job_id: str, **fields: Any) -> None:
        with fakebatch.locked_state(str(self.dir)) as state:
            state["lsf"]["jobs"][job_id].update(fields)
