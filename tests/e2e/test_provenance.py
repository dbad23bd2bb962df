"""Per-attempt usage and provenance, from a real pilot to ``glidein show``, ``logs`` and ``status --json``."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from glidein_client.wire.codec import decode
from glidein_client.wire.schema import AttemptView, JobSpec, JobView, Role
from glidein_server.store.sqlite import SqliteStore

from .test_cli import Glidein

pytestmark = [pytest.mark.slow]


@pytest.fixture
async def glidein(live_server: Any, tmp_path: Path) -> Glidein:
    token_file = live_server.write_secret("ann.token", await live_server.token(Role.USER, "ann"))
    (tmp_path / "work").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLIDEIN_")}
    env.update(
        XDG_CONFIG_HOME=str(tmp_path / "no-config"), GLIDEIN_URL=live_server.url, GLIDEIN_TOKEN_FILE=str(token_file)
    )
    return Glidein(tmp_path / "work", env)


# Holds 150 MB and burns about 0.6 s of CPU in a child process the shell waits for, then writes an output.
BURN = (
    "python3 -c 'import time\nb=b\"x\"*(150<<20)\nt=time.process_time()\nwhile time.process_time()-t<0.6: pass'"
    " && sha256sum in.txt > out.txt"
)


async def test_a_done_job_records_where_and_how_it_ran(live_server: Any, glidein: Glidein) -> None:
    data = b"provenance input\n"
    (glidein.cwd / "in.txt").write_bytes(data)
    (glidein.cwd / "job.sh").write_text(BURN + "\n")
    r = await glidein(
        "submit", "--json", "--script", "job.sh", "-i", "in.txt", "-o", "out.txt", "--cpus", "1", "--walltime", "60s"
    )
    assert r.rc == 0, r.err
    job_id = str(r.json()["ids"][0])
    await live_server.start_pilot(cpus=2, idle_timeout_s=3)
    r = await glidein("wait", job_id, "--timeout", "60s")
    assert r.rc == 0, r.out + r.err + live_server.pilot_logs()

    r = await glidein("show", job_id, "--json")
    assert r.rc == 0, r.err
    shown = r.json()
    job = decode(json.dumps(shown["job"]).encode(), JobView)
    (attempt,) = [decode(json.dumps(a).encode(), AttemptView) for a in shown["attempts"]]
    p = attempt.provenance
    assert p is not None
    assert p.host and p.batch_system == "local" and p.batch_id
    assert p.python.endswith(platform.python_version())
    assert p.pilot_version and p.os and p.cpu_model
    assert len(p.cores) == 1  # pinned to one core of the pilot's
    assert p.inputs[0].name == "in.txt" and p.inputs[0].sha256 == hashlib.sha256(data).hexdigest()
    out = attempt.outputs[0]
    assert (await glidein("fetch", job_id, "-d", "got")).rc == 0
    got = (glidein.cwd / "got" / job_id / "out.txt").read_bytes()
    assert out.name == "out.txt" and out.sha256 == hashlib.sha256(got).hexdigest()
    # CPU time of the child the shell waited for is counted: about 0.6 s of a ~0.7 s wall.
    assert attempt.cpu_s is not None and attempt.cpu_s >= 0.5
    assert p.cpu_user_s + p.cpu_system_s == pytest.approx(attempt.cpu_s, abs=0.01)
    assert attempt.wall_s is not None and attempt.wall_s >= attempt.cpu_s * 0.9
    # Efficiency is CPU over wall scaled by cores (the machine may be busy: the wall may be long).
    assert attempt.cpu_efficiency == pytest.approx(attempt.cpu_s / (attempt.wall_s * 1), abs=1e-3)
    assert 0 < attempt.cpu_efficiency <= 1.05
    assert p.started_at is not None and p.ended_at is not None and p.ended_at >= p.started_at
    assert attempt.max_rss_mb is not None and attempt.max_rss_mb >= 150  # the peak of its largest process
    # The job keeps the usage of the attempt whose result it kept.
    assert job.usage is not None and job.usage.attempt_id == attempt.id
    assert job.usage.cpu_efficiency == attempt.cpu_efficiency

    r = await glidein("show", job_id)
    assert f"host:      {p.host} (local job {p.batch_id})" in r.out
    assert f"input:     in.txt  sha256 {p.inputs[0].sha256}" in r.out
    assert f"output:    out.txt  sha256 {out.sha256}" in r.out
    assert "CPU efficiency" in r.out and "(its result was kept)" in r.out
    r = await glidein("logs", job_id)
    assert f"output:    out.txt  sha256 {out.sha256}" in r.out and "cpu time:  user" in r.out
    r = await glidein("status", "--json", job_id)
    (listed,) = r.json()["jobs"]
    assert listed["usage"]["provenance"]["host"] == p.host
    assert listed["usage"]["cpu_s"] == attempt.cpu_s


async def test_an_older_database_gains_the_usage_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE attempts (id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, pilot_id INTEGER NOT NULL,
            site TEXT NOT NULL, lease TEXT NOT NULL, state TEXT NOT NULL, outcome TEXT, exit_code INTEGER,
            reason TEXT, claimed_at REAL NOT NULL, started_at REAL, finished_at REAL,
            lease_expires REAL NOT NULL, wall_s REAL, max_rss_mb REAL,
            stdout_tail TEXT NOT NULL DEFAULT '', stderr_tail TEXT NOT NULL DEFAULT '');
        INSERT INTO attempts (job_id, pilot_id, site, lease, state, outcome, claimed_at, lease_expires, wall_s)
            VALUES (1, 1, 'old', 'l', 'ended', 'done', 1.0, 2.0, 3.0);
        """
    )
    db.close()
    store = SqliteStore(os.fspath(path))
    await store.open()
    try:
        (job_id,) = await store.add_jobs("ann", [JobSpec(argv=["true"])], 1.0)
        assert job_id == 1
        (attempt,) = await store.attempts_of(1)
        assert attempt.site == "old" and attempt.wall_s == 3.0
        assert attempt.cpu_s is None and attempt.provenance is None and attempt.cpu_efficiency is None
    finally:
        await store.close()


async def test_status_by_dataset_shows_progress_cores_and_efficiency(live_server: Any, glidein: Glidein) -> None:
    for ds, argv in (("run1", ["true"]), ("run1", ["false"]), ("run2", ["true"]), ("", ["true"])):
        labels = ["--label", f"dataset={ds}"] if ds else []
        r = await glidein("submit", "--max-retries", "0", "--walltime", "60s", "--memory", "100M", *labels, "--", *argv)
        assert r.rc == 0, r.err
    await live_server.start_pilot(cpus=2, idle_timeout_s=3)
    await glidein("wait", "--timeout", "60s")
    r = await glidein("status", "--by", "dataset")
    lines = {line.split()[0]: line.split() for line in r.out.splitlines()[1:]}
    assert lines["run1"][1:6] == ["0", "0", "1", "1", "0"], r.out
    assert lines["run2"][1:6] == ["0", "0", "1", "0", "0"], r.out
    assert lines["(no"][2:7] == ["0", "0", "1", "0", "0"], r.out
    assert lines["run1"][8].endswith("%")  # the done job's CPU efficiency
    got = (await glidein("status", "--by", "dataset", "--json")).json()
    assert got["run1"]["states"] == {"done": 1, "failed": 1} and got["run1"]["cores_in_use"] == 0
